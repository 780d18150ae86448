import Synchronization

extension Machine {
    /// Waits until every tasklet run scheduled before the call has run, wherever it runs (on the CPU it was
    /// queued on, or on the survivor that took it over when that CPU was detached): a barrier for tests and
    /// shutdown. Runs scheduled meanwhile may run before it returns, or not.
    ///
    /// How: a marker tasklet is queued behind each online CPU's high and normal lists, and the drain waits until
    /// all of them ran. A CPU runs its lists in order, and a takeover moves a detached CPU's lists, markers
    /// included, in order, so each marker runs after what was queued ahead of it. A run that a CPU met while its
    /// tasklet was running elsewhere is queued again, behind the marker: when that happened meanwhile, the drain
    /// queues new markers and waits again. The schedule and run paths are not changed (no lock, no allocation):
    /// only that rare re-queue counts itself.
    ///
    /// Not waited for: the run of a tasklet that was disabled when its CPU reached it (it stays queued until
    /// ``Tasklet/enable()``), a run removed by ``Tasklet/kill()``, and a schedule still in progress on another
    /// thread (one that coalesced with it returned false: `schedule` returned before the call means its run is
    /// queued).
    ///
    /// - Parameter timeout: the whole wait (unlike a cross-call's, which bounds only the start: here the work
    ///   is the waiting); nil: ``Configuration/responseTimeout``; zero or negative: one look; `Duration.noTimeout`:
    ///   no limit. The markers are queued under the hotplug read lock, which waits for an attach or detach in
    ///   progress first.
    /// - Throws: ``HotplugError/timeout(cpu:operation:waitedNanoseconds:)`` with ``HotplugOperation/taskletDrain``
    ///   and a CPU whose marker had not run (markers left queued run later, doing nothing);
    ///   ``HotplugError/shutDown`` when the machine is or gets shut down (runs still queued at the end are
    ///   dropped); ``HotplugError/wouldDeadlock(operation:reason:)`` with ``HotplugOperation/taskletDrain``: on one
    ///   of this machine's CPUs (a tasklet, a cross-call) with ``DeadlockReason/onLogicalCPU``, since that CPU runs
    ///   tasklets only once the caller returns; from a hotplug callback or a stop_machine body with their reasons
    ///   (the operation in progress waits for the caller, and may be the one that moves a CPU's lists).
    public func drainTasklets(timeout: Duration? = nil) throws(HotplugError) {
        if let reason = reentry() { throw .wouldDeadlock(operation: .taskletDrain, reason: reason) }
        if currentCPU != nil { throw .wouldDeadlock(operation: .taskletDrain, reason: .onLogicalCPU) }
        try ensureNotShutDown()
        let started = Shim.monotonicNanoseconds()
        let deadline = Timeout.deadline(after: Timeout.nanoseconds(timeout, default: responseNanoseconds), from: started)
        let engine = tasklets
        while true {
            // Acquire: partner of the release after a re-queue (see `TaskletEngine.requeues`).
            let requeues = engine.requeues.load(ordering: .acquiring)
            // Under the read lock no takeover is half done: every CPU's lists are either open (the marker goes
            // behind them) or closed with everything they held already queued on a survivor (no marker needed).
            let markers = withCPUsReadLocked { () -> [(cpu: Int, ran: DrainMarker)] in
                var markers: [(cpu: Int, ran: DrainMarker)] = []
                for cpu in engine.queues.indices {
                    for priority in [Tasklet.Priority.high, .normal] {
                        let ran = DrainMarker()
                        // Born SCHED and ORPHANED: no handle; its run (or its removal) releases it.
                        let marker = TaskletCore(priority: priority,
                                                 state: TaskletCore.scheduledBit | TaskletCore.orphanedBit) {
                            ran.flag.store(true, ordering: .releasing)   // partner of the acquire below
                        }
                        if engine.pushMarker(marker, on: cpu) { markers.append((cpu, ran)) }
                    }
                }
                return markers
            }
            var waiting = markers[...]
            var spins = 0
            while let first = waiting.first {
                if first.ran.flag.load(ordering: .acquiring) { waiting.removeFirst(); continue }
                if isShutDown { throw .shutDown }
                let now = Shim.monotonicNanoseconds()
                if now >= deadline {
                    throw .timeout(cpu: first.cpu, operation: .taskletDrain, waitedNanoseconds: now - started)
                }
                spins += 1
                if spins < 64 { Shim.yield() } else { Shim.sleep(microseconds: 50) }
            }
            // Acquire: the markers ran after any re-queue of a run ahead of them (same CPU, program order).
            if engine.requeues.load(ordering: .acquiring) == requeues { return }
        }
    }
}

/// Set by a drain marker when it runs.
final class DrainMarker: Sendable {
    let flag = Atomic<Bool>(false)
}
