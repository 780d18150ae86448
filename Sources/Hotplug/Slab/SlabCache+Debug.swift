// Debug mode (SlabCache.Options.debug): poisoning, double-free and foreign-pointer detection, under a lock.

extension SlabCache {
    /// Debug mode's bookkeeping: the slabs of this cache (by base address) and the objects handed out.
    struct DebugState {
        var slabs: Set<UInt> = []
        var live: Set<UInt> = []
    }

    /// The byte a free object is filled with in debug mode (after its link), checked when it is handed out again.
    static let poison: UInt8 = 0x6b
    /// The bytes of a free object that hold its link (on a slab's free list or a remote-free stack): not poisoned.
    static let link = MemoryLayout<UInt>.size

    /// Stops the process with a message naming the cache.
    private func debugFailure(_ message: String) -> Never {
        fatalError("SlabCache '\(name)': \(message)")
    }

    /// Checks a pointer being freed: an object of this cache, live; then poisons it.
    func debugTakeBack(_ object: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: object)
        let base = address & ~UInt(slabBytes - 1)
        debugState!.withLock { state in
            guard state.slabs.contains(base) else {
                debugFailure("free of a foreign pointer \(hex(address)): it is not in any slab of this cache")
            }
            let offset = Int(address - base) - headerBytes
            guard offset >= 0, offset % objectStride == 0, offset / objectStride < objectsPerSlab else {
                debugFailure("free of a foreign pointer \(hex(address)): it is inside slab \(hex(base)) but not at the start of an object")
            }
            guard state.live.remove(address) != nil else {
                debugFailure("double free of object \(hex(address)) (object \(offset / objectStride) of slab \(hex(base)))")
            }
        }
        if objectSize > SlabCache.link {
            (object + SlabCache.link).initializeMemory(as: UInt8.self, repeating: SlabCache.poison,
                                                       count: objectSize - SlabCache.link)
        }
    }

    /// Checks an object being handed out: still poisoned (nobody wrote to it while it was free); marks it live.
    func debugHandOut(_ object: UnsafeMutableRawPointer) {
        if objectSize > SlabCache.link {
            let bytes = (object + SlabCache.link).assumingMemoryBound(to: UInt8.self)
            for index in 0..<(objectSize - SlabCache.link) where bytes[index] != SlabCache.poison {
                debugFailure("object \(hex(UInt(bitPattern: object))) was written after it was freed (byte \(index + SlabCache.link) is \(hex(UInt(bytes[index]))), the poison is 0x6b)")
            }
        }
        debugState!.withLock { _ = $0.live.insert(UInt(bitPattern: object)) }
    }

    private func hex(_ value: UInt) -> String { "0x" + String(value, radix: 16) }
}
