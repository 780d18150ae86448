extension PerCPU {
    /// How a detached CPU's slot is folded into a surviving CPU's: the first argument is the survivor's slot, the
    /// second the dead CPU's, which the merge should reset (the CPU finds that value when it comes back).
    public typealias Merge = @Sendable (_ survivor: inout Value, _ dead: inout Value) -> Void

    /// Registers a PREPARE hotplug state named `name` whose teardown merges a detached CPU's slot into a surviving
    /// CPU's slot with `merge`: Linux's "dead" callbacks that fold a dead CPU's counters or caches into a live
    /// CPU's, written once.
    ///
    /// When it runs: in the PREPARE section, after the CPU is dead (docs/ARCHITECTURE.md, "The hotplug walk"). The
    /// dead CPU's thread is parked and out of the online mask, and runs none of its code any more, so its slot is
    /// the merge's alone; and the detach holds the hotplug write lock, so no ``forEachOnline(_:)`` runs and the
    /// survivor stays online. Earlier (an ONLINE or STARTING teardown) the dying CPU could still add to its slot
    /// after the merge, and the value would be lost until it came back.
    ///
    /// Where it runs: on the survivor's own thread, in a cross-call (``Machine/run(on:timeout:_:)``) that the
    /// control thread waits for without a bound. The survivor's own ``withLocal(_:)`` code therefore never runs
    /// at the same time as the merge (a CPU runs one thing at a time, and a cross-call runs at a safe point), so the
    /// merge needs no lock and the survivor's code none either. The detach waits for the survivor to reach a safe
    /// point, as its stop_machine already did for every online CPU.
    ///
    /// What the merge may touch: the two slots it is given. It runs inside the hotplug callback (the detach waits
    /// for it): the calls a PREPARE callback may make are the ones it may make (docs/ARCHITECTURE.md, "Rules for
    /// callbacks and bodies"); ``withSlot(of:_:)`` of other online CPUs is a data race there as anywhere.
    ///
    /// The merge also runs when an attach fails after passing this state and rolls back (the slot then holds what
    /// the CPU's last merge left there, the reset value, or the initial value of a CPU never attached). It does not
    /// run for a CPU still online (``Machine/Hotplug-swift.struct/unregister(_:invokeTeardown:)`` with
    /// `invokeTeardown` runs nothing), nor when no CPU is left online (the machine's last CPU at shutdown): that slot
    /// keeps its value. A cross-call that fails (the machine shut down meanwhile) leaves the dead slot as it is and
    /// is logged. The state holds this `PerCPU` weakly: once it is gone, the teardown does nothing; unregister the
    /// returned state to free its slot in the table.
    ///
    /// - Parameters:
    ///   - name: the state's name ("subsys:mode"), unique in the machine's table.
    ///   - survivor: picks the CPU that receives `dead`'s values, from the online ones; nil, or a CPU that is not
    ///     online (or is `dead`): the lowest-numbered online CPU.
    ///   - merge: folds the dead slot into the survivor's and resets the dead slot.
    /// - Returns: the registered state (unregister it with ``Machine/Hotplug-swift.struct/unregister(_:invokeTeardown:)``).
    /// - Throws: the errors of ``Machine/Hotplug-swift.struct/register(_:section:invokeOnExisting:startup:teardown:)``:
    ///   ``HotplugError/duplicateStateName(_:existing:)``, ``HotplugError/noFreeState(section:)``,
    ///   ``HotplugError/invalidConfiguration(_:)`` for an empty name, ``HotplugError/shutDown``,
    ///   ``HotplugError/wouldDeadlock(operation:reason:)`` from a hotplug callback or a stop_machine body.
    @discardableResult
    public func mergeOnDetach(_ name: String, into survivor: (@Sendable (_ dead: Int) -> Int)? = nil,
                              _ merge: @escaping Merge) throws(HotplugError) -> HotplugState {
        // Weak: the state table is kept by every CPU thread, and this PerCPU keeps the machine.
        try machine.hotplug.register(name, section: .prepare, invokeOnExisting: false, startup: nil,
                                     teardown: { [weak self] dead in self?.mergeDetached(dead, name, survivor, merge) })
    }

    /// The teardown of ``mergeOnDetach(_:into:_:)`` (control thread, after `dead` died).
    private func mergeDetached(_ dead: Int, _ name: String, _ survivor: (@Sendable (Int) -> Int)?, _ merge: @escaping Merge) {
        let online = machine.online
        guard !online.contains(dead) else { return }   // an unregistration's teardown: nothing died
        let chosen = survivor.map { $0(dead) }.flatMap { $0 != dead && online.contains($0) ? $0 : nil }
        guard let target = chosen ?? online.first(where: { _ in true }) else { return }   // nobody left
        do {
            try machine.run(on: target, timeout: .noTimeout) {
                merge(&self.slot(target).pointee, &self.slot(dead).pointee)
            }
        } catch {
            machine.logger.error("\(name): CPU \(dead)'s per-CPU values were not merged into CPU \(target): \(error)")
        }
    }
}
