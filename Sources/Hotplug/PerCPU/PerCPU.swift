/// One slot per possible logical CPU of a machine, each on its own cache lines, so that CPUs updating their own
/// slots never share a line (no false sharing) and take no lock.
///
/// A CPU reaches its own slot with ``withLocal(_:)``: it runs on that CPU's thread, so nobody else touches the
/// slot meanwhile. ``forEachOnline(_:)`` visits every online CPU's slot on that CPU's own thread, with the online
/// mask held stable. Slots of CPUs that are not online keep their values: a PREPARE teardown (on the control
/// thread, after the CPU is dead) may read or drain a dead CPU's slot with ``withSlot(of:_:)``.
public final class PerCPU<Value>: @unchecked Sendable {
    // @unchecked: slot `i` is touched only by logical CPU `i`'s thread (withLocal, forEachOnline), or by one thread
    // while CPU `i` is not running (withSlot: the caller's promise, documented there).
    public let machine: Machine
    private let base: UnsafeMutableRawPointer
    /// Bytes from one slot to the next: the value's stride rounded up to whole cache lines.
    public let slotStride: Int
    static var cacheLine: Int { 64 }

    /// - Parameters:
    ///   - machine: whose possible CPUs get a slot each.
    ///   - initial: the first value of each CPU's slot.
    public init(_ machine: Machine, initial: (_ cpu: Int) -> Value) {
        self.machine = machine
        let line = PerCPU.cacheLine
        let size = max(MemoryLayout<Value>.stride, 1)
        slotStride = (size + line - 1) / line * line
        base = .allocate(byteCount: slotStride * machine.possibleCount,
                         alignment: max(line, MemoryLayout<Value>.alignment))
        for cpu in 0..<machine.possibleCount {
            (base + cpu * slotStride).bindMemory(to: Value.self, capacity: 1).initialize(to: initial(cpu))
        }
    }

    deinit {
        for cpu in 0..<machine.possibleCount { slot(cpu).deinitialize(count: 1) }
        base.deallocate()
    }

    func slot(_ cpu: Int) -> UnsafeMutablePointer<Value> {
        (base + cpu * slotStride).assumingMemoryBound(to: Value.self)
    }

    /// The calling CPU's slot, without a lock. The body's error comes out unchanged.
    /// - Warning: traps when the caller is not a logical CPU of ``machine`` (a programmer error).
    public func withLocal<T, E: Error>(_ body: (_ cpu: Int, inout Value) throws(E) -> T) throws(E) -> T {
        guard let cpu = machine.currentCPU else {
            preconditionFailure("PerCPU.withLocal called off the machine's logical CPUs (thread \(Shim.currentThreadID))")
        }
        return try body(cpu, &slot(cpu).pointee)
    }

    /// Runs `body` on every online CPU's own thread with that CPU's slot, the online mask held stable
    /// (``Machine/withCPUsReadLocked(_:)``). Returns each CPU's result.
    ///
    /// From a hotplug callback it takes no lock (the operation in progress holds it and waits for the caller):
    /// the CPUs it visits are the online ones at that point of the walk.
    /// - Throws: the errors of ``Machine/runOnEach(timeout:_:)`` (``HotplugError/shutDown`` once the machine is
    ///   shut down; ``HotplugError/wouldDeadlock(operation:reason:)`` from a stop_machine body).
    public func forEachOnline<T: Sendable>(_ body: @escaping @Sendable (_ cpu: Int, inout Value) -> T) throws(HotplugError) -> [Int: T] {
        try machine.withCPUsReadLocked { () throws(HotplugError) in
            try machine.runOnEach { cpu in body(cpu, &self.slot(cpu).pointee) }
        }
    }

    /// Any CPU's slot, from any thread.
    /// - Parameter body: the work; it cannot throw (see the form with a throwing body).
    /// - Throws: ``HotplugError/invalidCPU(_:)``. After ``Machine/shutdown()`` the slots stay readable (no CPU
    ///   touches them any more).
    /// - Warning: only while that CPU cannot touch it: it is not online (a PREPARE callback, after detach), or the
    ///   caller runs on that CPU. Otherwise this is a data race.
    public func withSlot<T>(of cpu: Int, _ body: (inout Value) -> T) throws(HotplugError) -> T {
        try machine.validate(cpu)
        return body(&slot(cpu).pointee)
    }

    /// ``withSlot(of:_:)`` with a body that throws: the body's error comes out unchanged.
    /// - Throws: the body's error; ``HotplugError/invalidCPU(_:)``.
    /// - Warning: the same as for the form with a body that cannot throw.
    public func withSlot<T>(of cpu: Int, _ body: (inout Value) throws -> T) throws -> T {
        try machine.validate(cpu)
        return try body(&slot(cpu).pointee)
    }

    /// The address of a CPU's slot (for placement checks).
    /// - Throws: ``HotplugError/invalidCPU(_:)`` for an id outside `0..<possible`.
    public func address(of cpu: Int) throws(HotplugError) -> UnsafeRawPointer {
        try machine.validate(cpu)
        return UnsafeRawPointer(base + cpu * slotStride)
    }
}
