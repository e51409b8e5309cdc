import LBConfig

/// What a scheduler may look at for one real server: pure values, so the algorithms are tested without sockets.
public struct Candidate: Sendable, Equatable {
    public var index: Int
    public var weight: Int
    public var activeConnections: Int

    public init(index: Int, weight: Int, activeConnections: Int) {
        self.index = index
        self.weight = weight
        self.activeConnections = activeConnections
    }
}

/// The scheduling algorithms of lb.yaml, with the state they carry between choices (round-robin positions).
/// Not thread-safe: `RealServerPool` calls it under its lock.
public struct SchedulerState: Sendable {
    public let algorithm: Scheduler
    private var nextIndex = 0
    /// Smooth weighted round robin (as nginx does it): each pick raises every current weight by its weight and
    /// lowers the winner by the total, which interleaves servers instead of sending bursts.
    private var currentWeights: [Int: Int] = [:]

    public init(_ algorithm: Scheduler) { self.algorithm = algorithm }

    /// Picks one of `candidates` (already limited to servers that may take traffic, weight > 0).
    /// `clientKey` is the client's address bytes for source-hash.
    /// (An autoclosure: only the hashing schedulers pay for the bytes.)
    public mutating func choose(from candidates: [Candidate], clientKey: @autoclosure () -> [UInt8]) -> Candidate? {
        guard !candidates.isEmpty else { return nil }
        switch algorithm {
        case .roundRobin:
            // Plain rotation; ignores weights by definition. Candidates come in server order.
            let pick = candidates.first { $0.index >= nextIndex } ?? candidates[0]
            nextIndex = pick.index + 1
            return pick
        case .weightedRoundRobin:
            let total = candidates.reduce(0) { $0 + $1.weight }
            var best: Candidate?
            var bestWeight = Int.min
            for candidate in candidates {
                let weight = (currentWeights[candidate.index] ?? 0) + candidate.weight
                currentWeights[candidate.index] = weight
                if weight > bestWeight { best = candidate; bestWeight = weight }
            }
            if let best { currentWeights[best.index, default: 0] -= total }
            return best
        case .leastConnections:
            return rotatingTies(candidates) { a, b in
                a.activeConnections == b.activeConnections ? nil : a.activeConnections < b.activeConnections
            }
        case .weightedLeastConnections:
            // Compare active/weight without division: a.active * b.weight < b.active * a.weight.
            return rotatingTies(candidates) { a, b in
                let lhs = a.activeConnections * b.weight, rhs = b.activeConnections * a.weight
                return lhs == rhs ? nil : lhs < rhs
            }
        case .sourceHash, .maglev:
            // Rendezvous hashing: removing a server only moves the clients that were on it.
            let clientKey = clientKey()
            return candidates.max { a, b in
                let ha = Self.score(clientKey, a), hb = Self.score(clientKey, b)
                return ha != hb ? ha < hb : a.index > b.index
            }
        }
    }

    /// The least loaded candidate; equally loaded ones take turns, so an idle pool still spreads new connections.
    /// `isLess` returns nil for a tie.
    private mutating func rotatingTies(_ candidates: [Candidate], isLess: (Candidate, Candidate) -> Bool?) -> Candidate? {
        let start = nextIndex
        func turn(_ c: Candidate) -> Int { c.index >= start ? c.index - start : c.index + 1_000_000 }
        let pick = candidates.min { a, b in isLess(a, b) ?? (turn(a) < turn(b)) }
        if let pick { nextIndex = pick.index + 1 }
        return pick
    }

    /// Weighted rendezvous score, compared as integers: hash scaled by weight.
    private static func score(_ key: [UInt8], _ candidate: Candidate) -> UInt64 {
        let hash = fnv1a(key, seed: UInt64(candidate.index))
        return (hash >> 16) &* UInt64(max(candidate.weight, 1))
    }
}

/// 64-bit FNV-1a, enough to spread clients and to make opaque ids; not a security boundary.
func fnv1a<Bytes: Sequence>(_ bytes: Bytes, seed: UInt64 = 0) -> UInt64 where Bytes.Element == UInt8 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325 ^ (seed &* 0x100_0000_01b3)
    for byte in bytes {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01b3
    }
    // Final avalanche so neighbouring seeds give unrelated values.
    hash ^= hash >> 33
    hash = hash &* 0xff51_afd7_ed55_8ccd
    hash ^= hash >> 33
    return hash
}
