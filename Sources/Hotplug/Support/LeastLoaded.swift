/// The index in `0..<count` with the smallest `load` among those `eligible` (the first on a tie, and the first
/// with nothing queued at once); nil when none is eligible. What the tasklet and pool placements share ("the online
/// CPU with the fewest queued").
@inline(__always)
func leastLoaded(_ count: Int, eligible: (Int) -> Bool, load: (Int) -> Int) -> Int? {
    var best: Int?
    var smallest = Int.max
    for index in 0..<count where eligible(index) {
        let value = load(index)
        if value < smallest { best = index; smallest = value }
        if value <= 0 { break }
    }
    return best
}
