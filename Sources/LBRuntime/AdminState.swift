/// An operator's override of one real server, kept across lbd restarts. Runtime state, not config: lbctl sets it,
/// the state file keeps it, the owner (LBAgent's `Agent`) folds it into the effective membership.
public enum AdminState: String, CaseIterable, Codable, Hashable, Sendable {
    /// Takes traffic (when healthy).
    case online
    /// No new connections; established ones run to their end. IPVS: weight 0.
    case drain
    /// Out now: the proxy closes its connections; IPVS removes the destination.
    case halt
}
