// hotplug-torture: the project's main job, like the kernel's rcutorture with its CPU on/off thread. Logical CPUs
// run tasklet storms, slab churn, cross-calls, SIGP orders and stop_machine calls while an on/off thread attaches
// and detaches random CPUs and injects failures into the hotplug state machine. Invariants are checked while the
// run goes on and at its end. Exits 0 when every invariant held; otherwise prints a line starting with `FAILED`
// that names the first broken invariant and the `--seed` value that reproduces the run, and exits 1.
//
// What runs (all of it at once, on real threads):
// - the on/off thread (OnOff.swift): every `--onoff-interval` ms (jittered) it picks a random logical CPU and
//   detaches it if online (never the last one), attaches it if parked. With probability `--fail-rate` it first
//   injects a one-shot failure at a random point where the hotplug walk lets one happen (docs/ARCHITECTURE.md, "The
//   hotplug walk"): on attach the bring-up, the built-in `slab:prepare` startup, or the startups of this run's own
//   PREPARE and ONLINE states; on detach the CPU's teardown (it refuses to die) or the ONLINE state's teardown. A
//   third of its operations are bulk operations instead (OnOffBulk.swift): `online(_:)` or `offline(_:)` of a random
//   set of CPUs (2 up to half the machine, at most 16; now and then with a CPU already at the target), each CPU of
//   the set with its own chance of an injected failure, every CPU of the set checked as a single operation's CPU
//   is; now and then a detach of every online CPU, which must be refused whole. It measures the wall time of every
//   successful attach and detach, and of every bulk call (also per CPU moved);
// - `--workers` worker threads (Workload.swift), each drawing actions from its own seeded stream: tasklet storms
//   (from the worker, and from logical CPUs in cross-calls), tasklets held disabled on a CPU while it may be
//   detached, slab churn (on the worker, on a CPU, on every CPU at once), cross-calls (`run(on:)`, `submit(on:)`,
//   `runOnEach`), SIGP orders (SENSE, SENSE_RUNNING, EXTERNAL_CALL, EMERGENCY_SIGNAL, COND_EMERGENCY_SIGNAL) from
//   the worker and from logical CPUs (to any CPU, itself included, also from a cross-call it runs on its way
//   offline; `--no-sigp-to-self` leaves the orders to itself out), `stopMachine` with and without an active set,
//   and the hotplug read lock;
// - the tasklets themselves (TaskletStorm.swift): each run counts itself, sometimes churns the slab, sometimes
//   schedules another tasklet on a random CPU;
// - the executor workload (ExecutorWorkload.swift; `--executors off` leaves it out): driver tasks, two per logical
//   CPU, hop between the CPUs' executors and the pool, call actors pinned to every CPU (also actor to actor), run
//   `Task.yield()` storms, task groups, unstructured tasks, continuations and async cross-calls;
// - the main thread: the status line, the deadline, and the livelock check.
//
// With `--misuse` (Misuse.swift) a misuse thread also makes wrong calls at random, each of which must be refused at
// once (within 1 s) with exactly the `HotplugError.wouldDeadlock(operation:reason:)` that docs/ARCHITECTURE.md,
// "Rules for callbacks and bodies", gives for it: `offline(N)` / `deconfigure(N)` from a cross-call or a tasklet on
// CPU N; `online`, `offline`, `hotplug.register` or `stopMachine` from inside this run's own hotplug callbacks (one in
// five); `offline`, `stopMachine` and `run(on:)` another CPU from inside a `stopMachine` body. It also sends SIGP STOP,
// then START, to a CPU busy in a cross-call while a prober thread makes `run(on:timeout: .milliseconds(5))` calls to
// the other CPUs: each must return within its timeout plus 250 ms, the busy call within 250 ms of the START (a detach
// of the stopped CPU meanwhile is refused with `stoppedByOrder`, and other orders to it may answer busy: both are
// documented). At the end, on a machine of 2 CPUs of its own, `shutdown()` runs while CPU 1 is busy in a long
// cross-call: it must return exactly {1}, and once the call returns the CPU's thread must leave and the process live
// on. These are three more invariants (`misuse`, `stop_storm`, `busy_shutdown` in the JSON report).
//
// With `--follow` (FollowMode.swift) the on/off thread attaches and detaches nothing: `Machine.follow` does, when the
// process affinity mask, the cgroup cpuset or the kernel's online CPUs change (an operator's `echo 0 >
// /sys/devices/system/cpu/cpu2/online`, a cgroup `cpuset.cpus` write, `taskset -a -p`); each change is printed as a
// `follow-event` line with its latency, must complete within `--follow-deadline`, and every invariant below is checked
// as before, with the online mask held still by the hotplug read lock while a check runs.
//
// The invariants (the first five are those of docs/ARCHITECTURE.md, "Invariants"; the summary lists checks and
// violations for each):
// - tasklets ran exactly once per schedule: every `schedule(on:)` that returned true is followed by exactly one
//   run (a schedule of a tasklet already queued coalesces and returns false). During the run a tasklet never finds
//   more runs than schedules; at the end, after a bounded drain, runs == schedules per tasklet (lost = shortfall,
//   duplicated = excess). Tasklets pending on a CPU that is detached move to a survivor: that is what is tested;
// - every slab object is accounted for: objects handed between CPUs and threads carry a tag (an object handed out
//   while in use, or overwritten, is caught); at quiescent points (every 250 ms the churn pauses and no hotplug
//   operation is in flight) the cache's `inUse` equals this run's own count, and `accountedInUse` equals `inUse`;
//   at the end everything is freed, nothing is in use, and `shrink()` leaves no byte mapped;
// - no per-CPU cache of an offline CPU holds anything: `cachedPerCPU` is 0 for every CPU that is not online,
//   after every operation, and at the end;
// - a parked CPU's thread burns no CPU time: from when a detached CPU's thread has stayed asleep in the kernel for
//   1 ms until it is attached again, its CPU time (schedstat) grows by at most 0.1% of the window
//   (docs/ARCHITECTURE.md, "Performance goals") plus 50 us of slack and the clock source's resolution (/proc's
//   utime + stime fallback counts whole clock ticks). The window does not start at the first sight of state S: the
//   kernel shows S while the thread is still on its way into the wait, and the CPU time it used since the last tick
//   reaches schedstat only when it is off its CPU. A thread that does not stay asleep within 2 s of its detach is a
//   violation too. The total growth is reported as `parked_cpu_time_growth_us`;
// - every CPU's thread is pinned: `Cpus_allowed_list` of every present CPU's thread is exactly its physical CPU;
// - and: tasklets run only on online CPUs and never concurrently with themselves; an injected failure fails its
//   operation at exactly that state with `rolledBack: true` and leaves the CPU, its masks and its hotplug state
//   where they were, and an operation without one succeeds (in a bulk operation: per CPU of the set, the others
//   moved, CPUs already at the target left alone, a set of every online CPU refused whole); this run's hotplug callbacks balance (one startup per
//   teardown, per CPU and state) and run on the thread their section names; cross-calls run on their target; SIGP
//   orders answer as docs/ARCHITECTURE.md, "SIGP orders", says and every accepted interruption reaches the handler
//   exactly once; stop_machine runs its body where asked with the online mask stable; nothing times out or stops
//   progressing;
// - and, for the executor workload: every unit of executor work ran exactly once and the task awaiting it resumed
//   (bounded waits); no serial executor ran two jobs at once; every job ran on an online CPU, CPU n's executor's on n
//   while n is online and on a stand-in while it is not, pool jobs on any online CPU.
//
// Random choices: every one (which CPU, which operation, which failure, which work, every worker's and every
// tasklet's stream) comes from a SplitMix64 stream derived from `--seed`, so `--seed N` repeats the same plan.
// Thread interleavings are the kernel's: a rerun repeats the plan, not the timing, as with rcutorture. A run that
// failed should be rerun with its seed (and `--log-level debug` for the library's hotplug transitions).
import ArgumentParser
import ExampleSupport
@_spi(Debugging) import Hotplug
import Logging

struct HotplugTorture: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hotplug-torture",
        abstract: "Attach and detach logical CPUs under load, inject failures, and check every invariant.",
        discussion: """
            Tasklet storms, slab churn, cross-calls, SIGP orders and stop_machine calls run on the logical CPUs \
            while an on/off thread attaches and detaches random CPUs and injects failures. Exits 0 when every \
            invariant held; otherwise prints a line starting with FAILED that names the broken invariant and the \
            random seed; run again with that --seed to repeat the same choices.
            """
    )

    @Option(parsing: .unconditional, help: "Logical CPUs (default: one per CPU of the process affinity mask, at least 2; more than the mask holds oversubscribes).")
    var cpus: Int?

    @Option(parsing: .unconditional, help: "How long the workload runs, in seconds (the final checks follow).")
    var seconds: Double = 10

    @Option(help: "Seed of every random choice. Default: random, printed.")
    var seed: UInt64?

    @Option(name: .customLong("onoff-interval"), parsing: .unconditional,
            help: "Milliseconds between two attach/detach operations (jittered by +-50%; 0: back to back).")
    var onoffInterval: Double = 3

    @Option(name: .customLong("fail-rate"), parsing: .unconditional, help: "Probability (0...1) that an attach or detach gets an injected failure.")
    var failRate: Double = 0.05

    @Option(parsing: .unconditional, help: "Worker threads driving the logical CPUs.")
    var workers: Int = 2

    @Flag(inversion: .prefixedNo,
          help: "Let logical CPUs send SIGP orders to themselves, also from cross-calls they run while going offline (--no-sigp-to-self leaves those orders out).")
    var sigpToSelf = true

    @Flag(help: "Follow the machine instead of attaching and detaching at random: the process affinity mask, the cgroup cpuset and the kernel's online CPUs decide which logical CPUs are attached (no failures are injected). Each change is printed as a follow-event line.")
    var follow = false

    @Option(name: .customLong("follow-deadline"), parsing: .unconditional,
            help: "With --follow: milliseconds within which each detach or attach must complete after the change.")
    var followDeadline: Double = 10

    @Flag(name: .customLong("follow-realtime"),
          help: "With --follow: run the follower's thread at SCHED_FIFO priority 1, as the kernel runs its hotplug threads (needs CAP_SYS_NICE).")
    var followRealtime = false

    @Flag(help: "Also make wrong calls at random while the load runs (a CPU taking itself offline, calls back into the machine from hotplug callbacks and stop_machine bodies), STOP and START busy CPUs, and end with a shutdown that must leave one busy CPU running: each wrong call must be refused at once with the documented error.")
    var misuse = false

    @Flag(help: "Print one JSON object on standard output (progress and the verdict go to standard error).")
    var json = false

    @Option(help: "The executor workload: tasks and actors on the logical CPUs' executors and the pool, checked (on or off).")
    var executors: ExecutorsSwitch = .on

    @Option(help: "Log level of the library: trace, debug (every hotplug transition), info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .warning

    /// Breaks the tasklet invariant on purpose (one run is left out of the count), to show that a broken
    /// invariant fails the run.
    @Flag(name: .customLong("debug-drop-tasklet"), help: .hidden)
    var debugDropTasklet = false

    /// Breaks the executor invariant on purpose (one continuation is never resumed, as a lost job would leave it),
    /// to show that the executor workload's checker reports it.
    @Flag(name: .customLong("debug-drop-job"), help: .hidden)
    var debugDropJob = false

    /// Breaks stop_machine on purpose (an idle CPU it claimed runs what is posted to it during the body), to show
    /// that the checker reports work running while a stop_machine body runs.
    @Flag(name: .customLong("debug-leak-claimed-cpus"), help: .hidden)
    var debugLeakClaimedCPUs = false

    static let maximumCPUs = 1_024
    static let maximumWorkers = 64

    func validate() throws {
        if let cpus, cpus < 2 { throw ValidationError("--cpus must be at least 2 (one CPU must stay online while another goes)") }
        if let cpus, cpus > HotplugTorture.maximumCPUs { throw ValidationError("--cpus must be at most \(HotplugTorture.maximumCPUs)") }
        guard seconds.isFinite, seconds > 0, seconds <= 86_400 else {
            throw ValidationError("--seconds must be a positive number of seconds, at most 86400")
        }
        guard onoffInterval.isFinite, (0...10_000).contains(onoffInterval) else {
            throw ValidationError("--onoff-interval must be between 0 and 10000 milliseconds")
        }
        guard failRate.isFinite, (0...1).contains(failRate) else { throw ValidationError("--fail-rate must be between 0 and 1") }
        guard followDeadline.isFinite, followDeadline > 0, followDeadline <= 60_000 else {
            throw ValidationError("--follow-deadline must be a positive number of milliseconds, at most 60000")
        }
        // The follower's detaches would meet the STOP storms' stopped CPUs, which only the on/off thread expects.
        if debugDropJob && executors == .off { throw ValidationError("--debug-drop-job needs the executor workload (--executors on)") }
        if misuse && follow { throw ValidationError("--misuse works with the on/off thread, not with --follow") }
        guard (1...HotplugTorture.maximumWorkers).contains(workers) else {
            throw ValidationError("--workers must be between 1 and \(HotplugTorture.maximumWorkers)")
        }
    }

    func run() throws {
        bootstrapLogging(level: logLevel)
        if debugLeakClaimedCPUs { Machine.debugLetClaimedCPUsRun(true) }
        let seed = self.seed ?? UInt64.random(in: .min ... .max)
        // With --json, standard output carries the JSON object alone.
        let say: @Sendable (String) -> Void
        if json { say = { reportToStandardError($0) } } else { say = { report($0) } }
        let topology = try setUp("read the topology", seed: seed, output: say) { try Topology.current() }
        let count = cpus ?? max(2, topology.cpus.count)
        Watchdog.start(afterSeconds: seconds + 180, program: "hotplug-torture", seed: seed, output: say)
        let settings = Settings(cpus: count, seconds: seconds, seed: seed, onoffIntervalMilliseconds: onoffInterval,
                                failRate: failRate, workers: workers, json: json, dropOneTaskletRun: debugDropTasklet,
                                sigpToSelf: sigpToSelf, followDeadlineMilliseconds: follow ? followDeadline : nil,
                                followPriority: followRealtime ? 1 : nil, misuse: misuse,
                                executors: executors == .on, dropOneJob: debugDropJob)
        let physical = topology.physicalCPUs.count
        say("hotplug-torture: \(count) logical CPUs on \(physical) physical CPU\(physical == 1 ? "" : "s") "
            + "(\(count > physical ? "oversubscribed" : "one each")), \(workers) workers, "
            + (follow ? "following the machine (deadline \(followDeadline) ms), "
                      : "--fail-rate \(failRate), --onoff-interval \(onoffInterval) ms, ")
            + (misuse ? "with misuse, " : "") + (executors == .on ? "" : "executors off, ") + "seed \(seed), \(fixed(seconds, 1)) s")

        let status = StatusLine(toStandardError: json)
        let torture = try setUp("set up a machine of \(count) logical CPUs", seed: seed, output: say) {
            try Torture(settings: settings, topology: topology, logger: Logger(label: "hotplug-torture"), status: status)
        }
        let outcome = try setUp("start the torture threads", seed: seed, output: say) { try torture.run() }

        if json {
            report(try setUp("encode the JSON report", seed: seed, output: say) { try outcome.json() })
        } else {
            for line in outcome.summary() { report(line) }
        }
        if let failed = outcome.failedLine {
            say(failed)
            throw ExitCode.failure
        }
        say(outcome.okLine)
    }
}

/// `--executors on|off`.
enum ExecutorsSwitch: String, ExpressibleByArgument, CaseIterable {
    case on, off
}

HotplugTorture.main()
