/// Which logical CPUs a ``Follower`` detaches and attaches when a CPU limit (a quota or a cap) changes how many it
/// keeps online. The rule, one CPU at a time:
///
/// - **detach**: from the NUMA node with the most online CPUs (a tie: the highest node id), its highest-numbered
///   online CPU; never the CPU the follower itself runs on (`keep`);
/// - **attach**: to the node with the fewest online CPUs among those with a CPU to attach (a tie: the lowest node
///   id), its lowest-numbered candidate.
///
/// So a change moves only as many CPUs as the count changed by (a shrink only detaches, a grow only attaches), the
/// nodes' online counts never differ by more than they must, and the lowest-numbered CPUs of each node stay: on
/// 2 nodes of 2 CPUs (0-1, 2-3), 4 -> 2 keeps 0 and 2, 2 -> 3 adds 1, 3 -> 1 keeps 0, 1 -> 4 adds 2, 1, 3.
enum CPUChoice {
    /// `count` CPUs of `online` to detach, in order; `node` gives a CPU's NUMA node. Fewer when only `keep` is left.
    static func toDetach(_ count: Int, online: [Int], keep: Int?, node: (Int) -> Int) -> [Int] {
        var perNode: [Int: [Int]] = [:]
        for cpu in online { perNode[node(cpu), default: []].append(cpu) }
        var chosen: [Int] = []
        while chosen.count < count {
            // The fullest node that has a CPU other than `keep` to give.
            let candidates = perNode.filter { $0.value.contains { $0 != keep } }
            guard let (from, cpus) = candidates.max(by: { ($0.value.count, $0.key) < ($1.value.count, $1.key) }),
                  let cpu = cpus.filter({ $0 != keep }).max() else { break }
            chosen.append(cpu)
            perNode[from]?.removeAll { $0 == cpu }
        }
        return chosen
    }

    /// `count` CPUs of `candidates` to attach, in order, given the CPUs `online` now.
    static func toAttach(_ count: Int, candidates: [Int], online: [Int], node: (Int) -> Int) -> [Int] {
        var onlinePerNode: [Int: Int] = [:]
        for cpu in online { onlinePerNode[node(cpu), default: 0] += 1 }
        var waiting: [Int: [Int]] = [:]
        for cpu in candidates { waiting[node(cpu), default: []].append(cpu) }
        var chosen: [Int] = []
        while chosen.count < count {
            let open = waiting.filter { !$0.value.isEmpty }
            guard let (to, cpus) = open.min(by: { (onlinePerNode[$0.key] ?? 0, $0.key) < (onlinePerNode[$1.key] ?? 0, $1.key) }),
                  let cpu = cpus.min() else { break }
            chosen.append(cpu)
            waiting[to]?.removeAll { $0 == cpu }
            onlinePerNode[to, default: 0] += 1
        }
        return chosen
    }
}
