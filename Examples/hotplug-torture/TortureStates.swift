import Hotplug

/// The run's own hotplug states, one per section, so that every section has a callback to watch and the ONLINE
/// section has a point where a failure can be injected:
///
/// - `torture:prepare` (PREPARE): must run on the control thread (no logical CPU);
/// - `torture:starting` (STARTING): must run on the CPU itself;
/// - `torture:online` (ONLINE): must run on the CPU itself; its startup gives the CPU a slab object of its own and
///   its teardown frees it (per-CPU data that follows attach and detach).
///
/// With `--misuse` each callback now and then calls back into the machine, which must refuse (Misuse.swift).
///
/// Each keeps a balance per CPU (startups less teardowns). Between two operations it must be 1 for every CPU
/// whose hotplug state is at or past the state, 0 for the others: a rollback that skipped a teardown, or ran a
/// startup twice, shows here.
final class TortureStates: Sendable {
    struct Watched: Sendable {
        let state: HotplugState
        let name: String
        let balance: [Counter]
    }

    let prepare: Watched
    let starting: Watched
    let online: Watched
    var all: [Watched] { [prepare, starting, online] }

    init(machine: Machine, slab: SlabChurn, checks: Checks, misuse: MisuseLoad?) throws(HotplugError) {
        let cpus = machine.possibleCount
        let balances = (0..<3).map { _ in (0..<cpus).map { _ in Counter() } }
        /// Counts one callback and checks where it runs (nil: on no logical CPU).
        func callback(_ name: String, _ balance: [Counter], _ step: Int, onCPU: Bool,
                      _ work: @escaping @Sendable (Int) -> Void = { _ in }) -> HotplugCallback {
            { [weak machine] cpu in
                let here = machine?.currentCPU
                checks.check(.callbacks, onCPU ? here == cpu : here == nil,
                             "\(name) \(step > 0 ? "startup" : "teardown") for CPU \(cpu) ran on "
                             + "\(here.map { "logical CPU \($0)" } ?? "the control thread")")
                let now = balance[cpu].add(step)
                checks.check(.callbacks, now == (step > 0 ? 1 : 0),
                             "\(name) on CPU \(cpu): balance \(now) after a \(step > 0 ? "startup" : "teardown")")
                work(cpu)
                misuse?.fromCallback("\(name) \(step > 0 ? "startup" : "teardown")", cpu: cpu)
            }
        }
        let hotplug = machine.hotplug
        prepare = Watched(state: try hotplug.register(
            "torture:prepare", section: .prepare,
            startup: callback("torture:prepare", balances[0], 1, onCPU: false),
            teardown: callback("torture:prepare", balances[0], -1, onCPU: false)),
            name: "torture:prepare", balance: balances[0])
        starting = Watched(state: try hotplug.register(
            "torture:starting", section: .starting,
            startup: callback("torture:starting", balances[1], 1, onCPU: true),
            teardown: callback("torture:starting", balances[1], -1, onCPU: true)),
            name: "torture:starting", balance: balances[1])
        online = Watched(state: try hotplug.register(
            "torture:online", section: .online,
            startup: callback("torture:online", balances[2], 1, onCPU: true) { slab.cpuOnline($0) },
            teardown: callback("torture:online", balances[2], -1, onCPU: true) { slab.cpuGoingOffline($0) }),
            name: "torture:online", balance: balances[2])
    }

    /// Checks every state's balance on `cpu` against how far the CPU is set up. Call it between operations.
    func checkBalance(_ machine: Machine, cpu: Int, checks: Checks) {
        let current: HotplugState
        let target: HotplugState
        do {
            current = try machine.hotplug.currentState(of: cpu)
            target = try machine.hotplug.targetState(of: cpu)
        } catch {
            checks.fail(.callbacks, "hotplug state of CPU \(cpu): \(error)")
            return
        }
        checks.check(.callbacks, current == target,
                     "logical CPU \(cpu) is at \(current) but heading for \(target) between operations")
        for watched in all {
            let expected = current >= watched.state ? 1 : 0
            let balance = watched.balance[cpu].load
            checks.check(.callbacks, balance == expected,
                         "\(watched.name) on CPU \(cpu): balance \(balance) at \(current), expected \(expected)")
        }
    }
}
