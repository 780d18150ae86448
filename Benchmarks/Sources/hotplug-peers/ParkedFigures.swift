import BenchSupport
import CPeers
import Hotplug
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Samples of the parked CPU time figure are shares of one core: CPU nanoseconds per second of wall time (1 ns/s =
/// 1e-7 % of a core); the table and the JSON print them in percent of one core.
let cpuShareUnitsPerPercent: Int64 = 10_000_000

/// The JSON unit of the parked CPU time figure.
let cpuShareUnit = "% of one core (the thread's CPU time growth over a window / the window's wall time)"

/// How long a detached CPU's thread, or the peer's thread, gets to park before the first window of a block.
let parkSettleNs: Int64 = 50_000_000

// MARK: h. parked CPU: CPU time vs a thread blocked in futex_wait

/// Ours: `Machine(cpus: 2, initiallyOnline: 2)`; logical CPU 1 (on `layout.target`) is detached (`offline(1)`) and
/// its thread parks. Logical CPU 0 stays online with nothing to do, so after its poll time it parks on its mailbox
/// (run state `.idle`). Both threads are sampled over the same windows: `blocks[0]` the detached CPU 1, `blocks[1]`
/// the idle CPU 0.
func oursParkedCPUTime(_ layout: Layout, _ settings: Settings,
                       _ blocks: [UnsafeMutableBufferPointer<Int64>]) throws(BenchFailure) {
    guard blocks[0].count > 0 else { return }
    let machine = try makeAllOnlineMachine(cpus: 2, timeoutNs: settings.timeoutNs)
    defer { machine.shutdown() }
    let samples = blocks.map(SampleBlock.init)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        do { try machine.offline(1) } catch { throw BenchFailure("offline(1): \(error)") }
        try spin(until: "logical CPU 1 offline", timeoutNs: settings.timeoutNs) {
            (try? machine.runState(of: 1)) == .offline
        }
        try spin(until: "logical CPU 0 idle", timeoutNs: settings.timeoutNs) {
            (try? machine.runState(of: 0)) == .idle
        }
        let tids = try [1, 0].map { (cpu: Int) throws(BenchFailure) -> pid_t in
            let tid: Int32?
            do { tid = try machine.threadID(of: cpu) } catch { throw BenchFailure("threadID(of: \(cpu)): \(error)") }
            guard let tid, tid > 0 else { throw BenchFailure("logical CPU \(cpu) has no thread") }
            return tid
        }
        try sampleCPUTime(of: tids, into: samples, settings: settings)
        // Still where the windows assumed they were: nothing woke them for good in the meantime.
        guard (try? machine.runState(of: 1)) == .offline else { throw BenchFailure("logical CPU 1 left offline") }
    }
}

/// The peer: a plain thread pinned to `layout.target` blocked in futex_wait, sampled over the same windows.
func peerParkedCPUTime(_ layout: Layout, _ settings: Settings,
                       into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    guard out.count > 0 else { return }
    var started: OpaquePointer?
    let rc = cpr_parked_start(Int32(layout.target), &started)
    guard rc == 0, let started else { throw .errno("pthread_create of the parked thread", rc) }
    let parked = ParkedThread(pointer: started)
    defer { cpr_parked_stop(parked.pointer) }
    let samples = SampleBlock(out)
    try PinnedThread.run(pinnedTo: layout.sender) { () throws(BenchFailure) in
        try spin(until: "the parked thread to start", timeoutNs: settings.timeoutNs) {
            cpr_parked_tid(parked.pointer) != 0
        }
        try sampleCPUTime(of: [cpr_parked_tid(parked.pointer)], into: [samples], settings: settings)
    }
}

/// The peer's parked thread, handed to the measuring thread.
private struct ParkedThread: @unchecked Sendable {
    // @unchecked: the C side publishes the thread id with release order (cpr_parked_tid loads it with acquire);
    // nothing else of it is touched until cpr_parked_stop, after the measuring thread was joined.
    let pointer: OpaquePointer
}

/// After `parkSettleNs`, fills `blocks[i]` with one sample per window of `settings.cpuTimeWindowNs` of thread
/// `tids[i]`: its CPU time growth over the window (/proc/self/task/TID/schedstat) per second of the window's wall time
/// (CLOCK_MONOTONIC). The measuring thread sleeps through each window.
private func sampleCPUTime(of tids: [pid_t], into blocks: [SampleBlock], settings: Settings) throws(BenchFailure) {
    func cpuTimes() throws(BenchFailure) -> [Int64] {
        try tids.map { (tid: pid_t) throws(BenchFailure) -> Int64 in
            var ns: Int64 = 0
            let rc = cpr_thread_cpu_ns(tid, &ns)
            if rc != 0 { throw .errno("/proc/self/task/\(tid)/schedstat", rc) }
            return ns
        }
    }
    sleep(nanoseconds: parkSettleNs)
    var before = try cpuTimes()
    var t0 = cpr_now_ns()
    for window in 0..<blocks[0].count {
        sleep(nanoseconds: settings.cpuTimeWindowNs)
        let after = try cpuTimes()
        let t1 = cpr_now_ns()
        for (index, block) in blocks.enumerated() {
            block[window] = (after[index] - before[index]) * 1_000_000_000 / max(1, t1 - t0)
        }
        (before, t0) = (after, t1)
    }
}

/// nanosleep for `ns`, resumed after a signal.
private func sleep(nanoseconds ns: Int64) {
    var request = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var left = timespec()
    while nanosleep(&request, &left) != 0 && errno == EINTR { request = left }
}
