// Node operations: moving objects between a node's slab lists, its depot of magazines and its remote-free
// ring and stack, mapping and unmapping slabs. The caller holds the node's lock.

extension SlabCache {
    /// Moves up to `count` objects out of the node into `output`: objects sent home first (the home list, the
    /// ring, the remote-free stack), then partial slabs, then free slabs, then a new slab. Returns how many (at
    /// least 1, or it throws).
    func take(from node: SlabNode, count: Int, into output: UnsafeMutablePointer<UnsafeMutableRawPointer>) throws(HotplugError) -> Int {
        var taken = 0
        while taken < count, let object = node.popHome() {
            output[taken] = object
            taken += 1
        }
        if taken < count { taken += node.ring.take(count - taken, into: output + taken) }
        if taken < count {
            node.takeRemote { object in
                if taken < count { output[taken] = object; taken += 1 } else { node.pushHome(object) }
            }
        }
        while taken < count {
            let slab: UnsafeMutablePointer<SlabHeader>
            if let partial = node.partial.head { slab = partial }
            else if let free = node.free.head { slab = free }
            else {
                do { slab = try mapSlab(node) } catch {
                    if taken > 0 { break }
                    throw error
                }
            }
            taken += carve(slab, node, count - taken, output + taken)
        }
        return taken
    }

    /// Takes up to `count` objects out of one slab and moves it to the list it now belongs on.
    private func carve(_ slab: UnsafeMutablePointer<SlabHeader>, _ node: SlabNode, _ count: Int,
                       _ output: UnsafeMutablePointer<UnsafeMutableRawPointer>) -> Int {
        var taken = 0
        let base = UnsafeMutableRawPointer(slab) - SlabHeader.offset + headerBytes
        while taken < count {
            if let object = slab.pointee.freeList {
                slab.pointee.freeList = object.load(as: UnsafeMutableRawPointer?.self)
                output[taken] = object
            } else if slab.pointee.bump < objectsPerSlab {
                output[taken] = base + slab.pointee.bump * objectStride
                slab.pointee.bump += 1
            } else {
                break
            }
            taken += 1
        }
        slab.pointee.outstanding += taken
        node.outstanding += taken
        move(slab, node, to: slab.pointee.outstanding == objectsPerSlab ? .full : .partial)
        return taken
    }

    /// Returns one object to its slab.
    func giveBack(_ object: UnsafeMutableRawPointer, _ node: SlabNode) {
        let slab = slabHeader(of: object)
        object.storeBytes(of: slab.pointee.freeList, as: UnsafeMutableRawPointer?.self)
        slab.pointee.freeList = object
        slab.pointee.outstanding -= 1
        node.outstanding -= 1
        move(slab, node, to: slab.pointee.outstanding == 0 ? .free : .partial)
    }

    /// Moves a slab to the list of `kind` (free, partial or full), when it is not there already.
    private func move(_ slab: UnsafeMutablePointer<SlabHeader>, _ node: SlabNode, to kind: SlabKind) {
        guard slab.pointee.kind != kind else { return }
        switch slab.pointee.kind {
        case .free: node.free.remove(slab)
        case .partial: node.partial.remove(slab)
        case .full: node.full.remove(slab)
        }
        slab.pointee.kind = kind
        switch kind {
        case .free: node.free.push(slab)
        case .partial: node.partial.push(slab)
        case .full: node.full.push(slab)
        }
    }

    /// Maps a new slab on the node's memory node and puts it on the node's free list.
    private func mapSlab(_ node: SlabNode) throws(HotplugError) -> UnsafeMutablePointer<SlabHeader> {
        let memory = try Numa.allocateAligned(bytes: slabBytes, onNode: node.memoryNode)
        memory.storeBytes(of: nodes.firstIndex { $0 === node }!, as: Int.self)
        let slab = (memory + SlabHeader.offset).bindMemory(to: SlabHeader.self, capacity: 1)
        slab.initialize(to: SlabHeader(freeList: nil,
                                       bump: 0, outstanding: 0, kind: .free, previous: nil, next: nil))
        node.free.push(slab)
        node.bytesMapped += slabBytes
        if let debugState {
            // Every object starts poisoned, so that a hand-out can check the poison whatever its history.
            (memory + headerBytes).initializeMemory(as: UInt8.self, repeating: SlabCache.poison,
                                                    count: objectsPerSlab * objectStride)
            debugState.withLock { _ = $0.slabs.insert(UInt(bitPattern: memory)) }
        }
        return slab
    }

    /// Unmaps free slabs until the node keeps `keep` of them.
    func trim(_ node: SlabNode, keeping keep: Int) {
        while node.free.count > keep, let slab = node.free.popFirst() {
            let memory = UnsafeMutableRawPointer(slab) - SlabHeader.offset
            let base = UInt(bitPattern: memory)
            slab.deinitialize(count: 1)
            Numa.free(memory, bytes: slabBytes)
            node.bytesMapped -= slabBytes
            debugState?.withLock { _ = $0.slabs.remove(base) }
        }
    }

    /// Puts a full magazine in the depot, or, when the depot is at its limit, its objects back in their slabs.
    func stashFull(_ magazine: Magazine, _ node: SlabNode) {
        if node.fullMagazines.count < depotLimit {
            node.fullMagazines.push(magazine)
        } else {
            empty(magazine, node)
            stashEmpty(magazine, node)
            trim(node, keeping: options.minimumFreeSlabsPerNode)
        }
    }

    /// Keeps an empty magazine for later, or frees it when the node already keeps its limit of them.
    func stashEmpty(_ magazine: Magazine, _ node: SlabNode) {
        if node.emptyMagazines.count < depotLimit { node.emptyMagazines.push(magazine) } else { magazine.destroy() }
    }

    /// Returns a magazine's objects to their slabs; the magazine is empty afterwards.
    func empty(_ magazine: Magazine, _ node: SlabNode) {
        for index in 0..<magazine.pointee.count { giveBack(magazine.objects[index], node) }
        magazine.pointee.count = 0
    }

    /// Everything in the depot, the remote-free ring and the remote-free stack back to the slabs.
    func emptyDepotAndRemote(_ node: SlabNode) {
        node.takeAllHome { giveBack($0, node) }
        while let magazine = node.fullMagazines.pop() {
            empty(magazine, node)
            stashEmpty(magazine, node)
        }
    }
}
