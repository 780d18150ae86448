import BenchSupport
import CPeers
import Hotplug
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// The slab figures: our SlabCache beside glibc malloc, jemalloc and tcmalloc. Every sample is a batch of
// `--slab-batch` operations, kept in picoseconds per operation like the tasklet batch figures. Each malloc peer runs
// in a process of its own: this runner again (`--malloc-peer-child`), with LD_PRELOAD naming the allocator (none for
// glibc), which checks that the library really serves malloc before it measures and prints its samples as JSON.

/// The object size of every slab figure, on both sides.
let slabObjectBytes = 64
/// Our cache's alignment (glibc, jemalloc and tcmalloc align a 64-byte block to 16 bytes).
private let slabAlignment = 16

/// The units of the slab figures, for the JSON.
let slabPairUnit = "ns per alloc+free pair (batch time / pairs per batch)"
let slabRemoteUnit = "ns per object (round time / objects per round: alloc on one CPU + free on another)"

/// The logical CPUs of the remote-free figure: CPU 0 (node 0 of a synthetic two-node machine) allocates, CPU 1
/// (node 1) frees.
private let remoteProducerCPU = 0
private let remoteConsumerCPU = 1

/// Our objects, handed from the producing CPU to the freeing one.
private struct ObjectRing: @unchecked Sendable {
    // @unchecked: the producer fills it before a release increment of `handed`, the consumer reads it after the
    // acquire load that sees it, and says so with a release increment of `freed` before the producer refills it.
    let objects: UnsafeMutablePointer<UnsafeMutableRawPointer>
    init(count: Int) { objects = .allocate(capacity: count) }
    func deallocate() { objects.deallocate() }
}

private func makeSlabCache(_ machine: Machine) throws(BenchFailure) -> SlabCache {
    do {
        return try SlabCache(name: "hotplug-peers", objectSize: slabObjectBytes, alignment: slabAlignment,
                             machine: machine, options: .init())
    } catch {
        throw BenchFailure("SlabCache: \(error)")
    }
}

/// Runs `body` on every online logical CPU at once (`runOnEach`); rethrows the first CPU's failure.
private func onEachCPU(_ machine: Machine, _ body: @escaping @Sendable (Int) throws -> Void) throws(BenchFailure) {
    do { _ = try machine.runOnEach(timeout: .seconds(60), body) } catch let failure as BenchFailure {
        throw failure
    } catch {
        throw BenchFailure("runOnEach: \(error)")
    }
}

// MARK: i. slab alloc+free pair, 1 CPU and every CPU at once

/// Ours: `Machine(cpus: cpus)` on the process's topology (logical CPU i on the i-th CPU of the affinity mask, all
/// online, default poll time) and one `SlabCache` of 64-byte objects. Every CPU runs its loop at once
/// (`runOnEach`, after a start gate): `--warmup` untimed batches, then its share of the block (the block split in
/// `cpus` nearly equal parts, pooled); a sample is one batch of `--slab-batch` pairs `allocate()` + `free(_:)` on
/// the CPU (the magazine fast path), per pair. `cpus` 1: logical CPU 0 alone.
func oursSlabPairs(cpus: Int) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let machine = try makeAllOnlineMachine(cpus: cpus, timeoutNs: settings.timeoutNs)
        defer { machine.shutdown() }
        let cache = try makeSlabCache(machine)
        let arrived = SharedWord64()
        defer { arrived.deallocate() }
        let samples = SampleBlock(out)
        let batch = settings.slabBatch
        try onEachCPU(machine) { cpu in
            let share = shareRange(cpu, of: samples.count, parts: cpus)
            arrived.bump()   // Release: partner of the others' acquire in cpr_wait_at_least.
            guard cpr_wait_at_least(arrived.pointer, UInt64(cpus), settings.timeoutNs) == 0 else {
                throw BenchFailure("logical CPU \(cpu): not every CPU reached the start gate")
            }
            for i in 0..<(settings.warmup + share.count) {
                let t0 = cpr_now_ns()
                for _ in 0..<batch {
                    let object: UnsafeMutableRawPointer
                    do { object = try cache.allocate() } catch { throw BenchFailure("allocate: \(error)") }
                    cache.free(object)
                }
                let t1 = cpr_now_ns()
                if i >= settings.warmup {
                    samples[share.lowerBound + i - settings.warmup] = (t1 - t0) * picosecondsPerNanosecond / Int64(batch)
                }
            }
        }
    }
}

// MARK: j. slab alloc + remote free

/// Ours: a machine on `Topology.synthetic(nodes: 2, cpusPerNode: 1)`: logical CPU 0 is node 0 (the first CPU of the
/// affinity mask), CPU 1 node 1 (the second). A round: CPU 0 allocates `--slab-batch` objects into a ring and hands
/// it over (release increment); CPU 1 frees every one of them, each a free of another node's object (one CAS onto
/// node 0's remote-free stack), and answers; CPU 0 then refills its magazines from that stack as it allocates
/// again. A sample is one round, from CPU 0's first allocation until it sees the answer, per object. Afterwards
/// CPU 1's magazines must be empty and node 1 must have no slab and no object out (every free on CPU 1 took the
/// remote path).
func oursSlabRemoteFree(_ layout: Layout, _ settings: Settings, into out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) {
    let machine: Machine
    do {
        machine = try Machine(topology: try Topology.synthetic(nodes: 2, cpusPerNode: 1),
                              configuration: .init(responseTimeout: .nanoseconds(settings.timeoutNs)))
    } catch {
        throw BenchFailure("machine: \(error)")
    }
    defer { machine.shutdown() }
    let cache = try makeSlabCache(machine)
    let ring = ObjectRing(count: settings.slabBatch)
    let handed = SharedWord64(), freed = SharedWord64(), abort = SharedFlag()
    defer {
        ring.deallocate()
        handed.deallocate()
        freed.deallocate()
        abort.deallocate()
    }
    let samples = SampleBlock(out)
    let batch = settings.slabBatch
    let rounds = settings.warmup + samples.count
    try onEachCPU(machine) { cpu in
        if cpu == remoteConsumerCPU {
            for round in 1...UInt64(rounds) {
                // Acquire: partner of the producer's release increment (the ring's objects, or `abort`).
                guard cpr_wait_at_least(handed.pointer, round, settings.timeoutNs) == 0 else {
                    throw BenchFailure("CPU 1: round \(round) was not handed over within \(settings.timeoutNs / 1_000_000) ms")
                }
                if abort.isSet { return }
                for j in 0..<batch { cache.free(ring.objects[j]) }
                freed.bump()   // Release: the ring may be refilled.
            }
            return
        }
        var failure: BenchFailure?
        rounds: for i in 0..<rounds {
            let t0 = cpr_now_ns()
            for j in 0..<batch {
                do { ring.objects[j] = try cache.allocate() } catch {
                    for k in 0..<j { cache.free(ring.objects[k]) }
                    failure = BenchFailure("allocate: \(error)")
                    break rounds
                }
            }
            handed.bump()   // Release: publishes the ring.
            // Acquire: partner of CPU 1's release increment.
            guard cpr_wait_at_least(freed.pointer, UInt64(i + 1), settings.timeoutNs) == 0 else {
                failure = BenchFailure("CPU 1 did not free round \(i + 1) within \(settings.timeoutNs / 1_000_000) ms")
                break
            }
            let t1 = cpr_now_ns()
            if i >= settings.warmup { samples[i - settings.warmup] = (t1 - t0) * picosecondsPerNanosecond / Int64(batch) }
        }
        if let failure {
            abort.set()      // Release store, then the release increment that CPU 1 waits for.
            handed.bump()
            throw failure
        }
    }
    // Every free on CPU 1 took the remote path: nothing went into its magazines, and node 1 has no slab and no
    // object out (a node-0 object given back through node 1's lists would show there).
    let statistics = cache.statistics()
    let node1 = statistics.nodes[1]
    guard statistics.cachedPerCPU[remoteConsumerCPU] == 0, node1.outstanding == 0,
          node1.fullSlabs + node1.partialSlabs + node1.freeSlabs == 0
    else {
        throw BenchFailure("CPU 1's frees did not all take the remote path: \(statistics.cachedPerCPU[remoteConsumerCPU]) "
                           + "objects in its magazines, node 1: \(node1)")
    }
}

// MARK: The malloc peers

/// An allocator beside ours. glibc's is always there; jemalloc and tcmalloc are preloaded when their library is.
enum MallocPeer: String, CaseIterable, Sendable {
    case glibc, jemalloc, tcmalloc

    /// The start every malloc peer's name shares (the slab figures' goal is against the best of them).
    static let namePrefix = "malloc: "

    var name: String {
        switch self {
        case .glibc: return Self.namePrefix + "glibc (own process)"
        case .jemalloc: return Self.namePrefix + "jemalloc (LD_PRELOAD)"
        case .tcmalloc: return Self.namePrefix + "tcmalloc (LD_PRELOAD)"
        }
    }

    /// The libraries to preload, in order of preference (none for glibc). tcmalloc_minimal is the allocator alone;
    /// the full library adds the heap profiler's hooks.
    private var sonames: [String] {
        switch self {
        case .glibc: return []
        case .jemalloc: return ["libjemalloc.so.2"]
        case .tcmalloc: return ["libtcmalloc_minimal.so.4", "libtcmalloc.so.4"]
        }
    }

    private var package: String {
        switch self {
        case .glibc: return "libc6"
        case .jemalloc: return "libjemalloc-dev"
        case .tcmalloc: return "libgoogle-perftools-dev"
        }
    }

    /// What the file of the library that serves malloc must contain.
    var providerMark: String {
        switch self {
        case .glibc: return "libc.so"
        case .jemalloc: return "libjemalloc"
        case .tcmalloc: return "libtcmalloc"
        }
    }

    /// The library to preload: the first of `sonames` found in the usual library directories; nil for glibc, or when
    /// none is installed.
    var library: String? { MallocPeer.libraries[self] }

    private static let libraries: [MallocPeer: String] = {
        #if arch(x86_64)
        let triple = "x86_64-linux-gnu"
        #elseif arch(arm64)
        let triple = "aarch64-linux-gnu"
        #else
        let triple = "unknown"
        #endif
        let directories = ["/usr/lib/\(triple)", "/lib/\(triple)", "/usr/lib64", "/lib64", "/usr/lib", "/usr/local/lib"]
        var found: [MallocPeer: String] = [:]
        for peer in MallocPeer.allCases {
            found[peer] = peer.sonames.lazy.flatMap { soname in directories.lazy.map { "\($0)/\(soname)" } }
                .first { access($0, R_OK) == 0 }
        }
        return found
    }()

    /// This peer as a contender of `figure`: unavailable when its library is not installed, or when this runner is
    /// a static executable (which LD_PRELOAD cannot change).
    func contender(_ figure: FigureID) -> HotplugPeers.Contender {
        var contender = HotplugPeers.Contender(name: name, measure: peerMalloc(self, figure))
        if self != .glibc && library == nil {
            contender.available = false
            contender.unavailableNote = "not available here: \(sonames.joined(separator: " or ")) not found (apt-get install \(package))"
        } else if self != .glibc && !cpr_dynamically_linked() {
            contender.available = false
            contender.unavailableNote = "not available here: this runner is a static executable, which LD_PRELOAD cannot change"
        }
        return contender
    }
}

/// What each malloc peer's child reported about its allocator (for the report), by peer.
enum MallocPeerLog {
    private static let seen = Mutex<[MallocPeer: String]>([:])

    static func record(_ peer: MallocPeer, _ line: String) { seen.withLock { $0[peer] = line } }

    /// One line per peer measured: its version and the file that served malloc.
    static var lines: [String] {
        seen.withLock { seen in MallocPeer.allCases.compactMap { seen[$0] } }
    }
}

/// The peer side of a slab figure: a child process for `peer` fills the block.
func peerMalloc(_ peer: MallocPeer, _ figure: FigureID) -> Side {
    { (layout: Layout, settings: Settings, out: UnsafeMutableBufferPointer<Int64>) throws(BenchFailure) in
        let arguments = [
            CommandLine.arguments[0], "--malloc-peer-child", "\(peer.rawValue):\(figure.rawValue)",
            "--iterations", "\(out.count)", "--rounds", "1", "--warmup", "\(settings.warmup)",
            "--slab-batch", "\(settings.slabBatch)", "--timeout-ms", "\(max(1, settings.timeoutNs / 1_000_000))",
        ]
        let text = try runChild(arguments, preload: peer.library)
        if let error = jsonField(text, "error") { throw BenchFailure("\(peer.rawValue) child: \(error)") }
        guard let samples = jsonIntegers(text, "samples_ps"), samples.count == out.count,
              let version = jsonField(text, "version"), let from = jsonField(text, "malloc_from")
        else {
            throw BenchFailure("\(peer.rawValue) child: unexpected output: \(text.prefix(200))")
        }
        for (index, sample) in samples.enumerated() { out[index] = sample }
        MallocPeerLog.record(peer, "\(version) (malloc from \(from))")
    }
}

/// Runs this executable with `arguments` (and LD_PRELOAD=`preload`, or none) and returns what it printed. Called
/// on the runner's main thread, which outlives the child (the child dies with the thread that started it).
private func runChild(_ arguments: [String], preload: String?) throws(BenchFailure) -> String {
    var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var pid = pid_t()
    var fd: Int32 = -1
    let rc: Int32
    if let preload {
        rc = preload.withCString { cpr_spawn_child("/proc/self/exe", &argv, $0, &pid, &fd) }
    } else {
        rc = cpr_spawn_child("/proc/self/exe", &argv, nil, &pid, &fd)
    }
    if rc != 0 { throw .errno("posix_spawn(/proc/self/exe)", rc) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n > 0 {
            bytes += chunk[0..<n]
        } else if n < 0 && errno == EINTR {
            continue
        } else {
            break
        }
    }
    close(fd)
    var status: Int32 = 0
    let waited = cpr_wait_child(pid, &status)
    if waited != 0 { throw .errno("waitpid", waited) }
    let text = String(decoding: bytes, as: UTF8.self)
    if status != 0 && jsonField(text, "error") == nil {
        throw BenchFailure("the child process ended with status \(status)")
    }
    return text
}

// MARK: The child process of a malloc peer

enum MallocPeerChild {
    /// Runs `spec` ("peer:figure") in this process, prints its samples (or its error) as one JSON object on stdout
    /// and exits (0, or 1 after an error).
    static func run(_ spec: String, samples count: Int, settings: Settings) -> Never {
        cpr_die_with_parent()
        do {
            let json = try measure(spec, count: count, settings: settings)
            print(json)
            exit(0)
        } catch {
            print("{\"error\": \(jsonString(error.description))}")
            exit(1)
        }
    }

    private static func measure(_ spec: String, count: Int, settings: Settings) throws(BenchFailure) -> String {
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, let peer = MallocPeer(rawValue: parts[0]), let figure = FigureID(rawValue: parts[1]),
              figure.isSlab
        else {
            throw BenchFailure("--malloc-peer-child: expected <glibc|jemalloc|tcmalloc>:<slab figure>, got \(spec)")
        }
        // The allocator this process really calls: the loader only warns when it cannot preload the library.
        let from: String
        if let provider = cpr_malloc_provider() {
            from = String(cString: provider)
            guard from.contains(peer.providerMark) else {
                throw BenchFailure("malloc is served by \(from), not \(peer.rawValue) (LD_PRELOAD did not take)")
            }
        } else if !cpr_dynamically_linked() && peer == .glibc {
            from = "this static executable"
        } else {
            throw BenchFailure("cannot tell which library serves malloc (dlsym / dladdr failed)")
        }
        var versionBuffer = [UInt8](repeating: 0, count: 128)
        versionBuffer.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { cpr_malloc_version($0.baseAddress, $0.count) }
        }
        let version = String(decoding: versionBuffer.prefix { $0 != 0 }, as: UTF8.self)
        let layout = try Layout.current()
        let buffer = SampleBuffer(count: count)
        defer { buffer.deallocate() }
        let samples = SampleBlock(buffer.storage)
        let size = slabObjectBytes, batch = settings.slabBatch
        switch figure {
        case .slabPair1CPU, .slabPairAllCPUs:
            let threads = figure == .slabPair1CPU ? 1 : layout.cpus.count
            let cpus = layout.cpuArray(threads)
            let counts = (0..<threads).map { shareRange($0, of: count, parts: threads).count }
            try PinnedThread.run(pinnedTo: layout.cpu(0)) { () throws(BenchFailure) in
                let rc = cpus.withUnsafeBufferPointer { cpus in
                    counts.withUnsafeBufferPointer { counts in
                        cpr_malloc_pairs(cpus.baseAddress, threads, size, batch, samples.base, counts.baseAddress,
                                         settings.warmup, settings.timeoutNs)
                    }
                }
                if rc != 0 { throw .errno("malloc + free pairs", rc) }
            }
        default:
            try PinnedThread.run(pinnedTo: layout.cpu(0)) { () throws(BenchFailure) in
                let rc = cpr_malloc_remote_rounds(Int32(layout.cpu(1) ?? -1), size, batch, samples.base,
                                                  samples.count, settings.warmup, settings.timeoutNs)
                if rc != 0 { throw .errno("malloc here + free there", rc) }
            }
        }
        let values = buffer.storage.map(String.init).joined(separator: ", ")
        return "{\"allocator\": \(jsonString(peer.rawValue)), \"version\": \(jsonString(version)), "
            + "\"malloc_from\": \(jsonString(from)), \"samples_ps\": [\(values)]}"
    }
}

// MARK: Reading the child's JSON

/// The string value of `"key": "..."` in `text` (the child's one-line JSON), unescaped; nil when absent.
private func jsonField(_ text: String, _ key: String) -> String? {
    guard let start = text.firstRange(of: "\"\(key)\": \"") else { return nil }
    var value = ""
    var escaped = false
    for character in text[start.upperBound...] {
        if escaped {
            value.append(character == "n" ? "\n" : character)
            escaped = false
        } else if character == "\\" {
            escaped = true
        } else if character == "\"" {
            return value
        } else {
            value.append(character)
        }
    }
    return nil
}

/// The integers of `"key": [...]` in `text`; nil when absent or malformed.
private func jsonIntegers(_ text: String, _ key: String) -> [Int64]? {
    guard let start = text.firstRange(of: "\"\(key)\": ["),
          let end = text[start.upperBound...].firstIndex(of: "]") else { return nil }
    let body = text[start.upperBound..<end]
    if body.allSatisfy(\.isWhitespace) { return [] }
    var values: [Int64] = []
    for item in body.split(separator: ",") {
        guard let value = Int64(String(item.filter { !$0.isWhitespace })) else { return nil }
        values.append(value)
    }
    return values
}
