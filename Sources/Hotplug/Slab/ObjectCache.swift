/// A typed layer over ``SlabCache`` for users who store values: objects of `Value`'s size and alignment, created
/// initialised and destroyed deinitialised.
///
/// ```swift
/// let nodes = try ObjectCache<TreeNode>(name: "tree-node", machine: machine)
/// let node = try nodes.create(TreeNode(key: 7))     // on a logical CPU: a magazine pop
/// nodes.destroy(node)                               // deinitialises, then frees
/// ```
public final class ObjectCache<Value: ~Copyable>: Sendable {
    /// The untyped cache underneath (statistics, ``SlabCache/shrink()``).
    public let slab: SlabCache

    /// - Throws: the errors of ``SlabCache/init(name:objectSize:alignment:machine:options:)``.
    public init(name: String, machine: Machine, options: SlabCache.Options = SlabCache.Options()) throws(HotplugError) {
        slab = try SlabCache(name: name, objectSize: max(MemoryLayout<Value>.size, 1),
                             alignment: max(MemoryLayout<Value>.alignment, 1), machine: machine, options: options)
    }

    /// A new object holding `value`.
    /// - Throws: ``HotplugError/system(call:errno:)`` when a new slab cannot be mapped.
    public func create(_ value: consuming Value) throws(HotplugError) -> UnsafeMutablePointer<Value> {
        let object = try slab.allocate().bindMemory(to: Value.self, capacity: 1)
        object.initialize(to: value)
        return object
    }

    /// Deinitialises the object's value and gives the object back.
    /// - Warning: `object` must come from ``create(_:)`` of this cache and not be destroyed twice.
    public func destroy(_ object: UnsafeMutablePointer<Value>) {
        object.deinitialize(count: 1)
        slab.free(UnsafeMutableRawPointer(object))
    }

    /// Where the objects are (see ``SlabCache/Statistics``).
    public func statistics() -> SlabCache.Statistics { slab.statistics() }
}
