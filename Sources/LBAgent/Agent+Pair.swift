import Foundation
import LBConfig
import LBControl
import LBHighAvailability
import LBRuntime
import LBTLS
import Logging

/// A pair of nodes: keepalived holds the VIPs on the master; both nodes keep IPVS, listeners and checks ready.
/// The agent follows keepalived's role, tells the peer its role and overrides about once a second (and at once
/// after a change), and takes the peer's newer overrides as its own.
extension Agent {
    /// How often the peer is told this node's state without a change to report.
    static let peerInterval = 1.0
    /// The peer counts as unreachable after this long without a valid message.
    static let peerSilence: Int64 = 3_000

    static func nowMilliseconds() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// A digest of the virtual services (what the two nodes must agree on); the pair section itself differs by node only
    /// in who reads it.
    static func configDigest(_ configuration: Configuration) -> String {
        let text = String(reflecting: configuration.virtualServices) + String(reflecting: configuration.ipvs)
        return KeyedHash.hmacSHA256(key: Array("lb config digest".utf8), data: Array(text.utf8)).prefix(8)
            .map { String(format: "%02x", $0) }.joined()
    }

    /// A reload may change what keepalived's file holds (VIPs, router id, interval, priorities, floating addresses);
    /// adding or removing the pair, or changing who the nodes are or how they talk, needs lbd to restart (keepalived
    /// and the peer channel are set up once). The reason, or nil.
    static func pairChangeNeedingRestart(from previous: Configuration, to next: Configuration) -> String? {
        switch (previous.highAvailability, next.highAvailability) {
        case (nil, nil): return nil
        case (nil, _?): return "adding high_availability needs lbd to restart (systemctl restart lbd)"
        case (_?, nil): return "removing high_availability needs lbd to restart (systemctl restart lbd)"
        case (let old?, let new?):
            let channel: (HighAvailability) -> [String] = { ha in
                ha.nodes.map { "\($0.name) \($0.address)" } + ["\(ha.peerPort)", ha.peerSecretFile]
            }
            return channel(old) == channel(new) ? nil
                : "changing the nodes' names or addresses, peer_port or peer_secret_file needs lbd to restart (systemctl restart lbd)"
        }
    }

    /// Before anything changes: this node is in the pair, keepalived and the secret are there.
    func checkPair(_ configuration: Configuration) throws {
        guard let ha = configuration.highAvailability else { return }
        guard let pair = effectors.pair else { throw PreflightError("high_availability: this lbd has no keepalived supervisor") }
        do {
            _ = try KeepalivedConfig.render(configuration, node: node, files: pair.keepalivedFiles)
        } catch {
            throw PreflightError("high_availability: \(error)")
        }
        try pair.check(ha)
    }

    /// After the machine matches the config: keepalived starts (so this node can become master only once it is
    /// ready), the peer channel opens, the heartbeat begins.
    func startPairNow() throws {
        guard let ha = state.configuration.highAvailability, let pair = effectors.pair, let peer = ha.peer(of: node) else { return }
        let text = try KeepalivedConfig.render(state.configuration, node: node, files: pair.keepalivedFiles)
        let saved = try store.load()
        var status = PairStatus(node: node, peer: peer.name, configDigest: Self.configDigest(state.configuration))
        status.standby = saved.pairStandby
        try pair.start(ha, node: node, keepalivedConfig: text, standby: saved.pairStandby) { [weak self] event in
            self?.pairEvent(event)
        }
        state.pair = status
        logger.notice("pair started", metadata: ["node": "\(node)", "peer": "\(peer.name) \(peer.address)",
                                                 "standby": "\(saved.pairStandby)"])
        startHeartbeat()
    }

    private func startHeartbeat() {
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + Self.peerInterval, repeating: Self.peerInterval)
        timer.setEventHandler { [weak self] in self?.heartbeat() }
        timer.resume()
        heartbeatTimer = timer
    }

    private func heartbeat() {
        guard var pair = state.pair else { return }
        let now = Self.nowMilliseconds()
        let reachable = pair.peerReachable(now: now, window: Self.peerSilence)
        if peerWasReachable && !reachable {
            logger.warning("peer silent", metadata: ["peer": "\(pair.peer)", "for_ms": "\(pair.peerLastHeard.map { now - $0 } ?? -1)"])
        }
        peerWasReachable = reachable
        pair.peerRole = reachable ? pair.peerRole : nil
        state.pair = pair
        tellPeer()
    }

    /// This node's state to the peer: role, config digest, every override change.
    func tellPeer() {
        guard let pair = state.pair, let effector = effectors.pair else { return }
        let nonce = (KeyedHash.randomBytes(16) ?? []).map { String(format: "%02x", $0) }.joined()
        let entries = state.overrideChanges.sorted { $0.key < $1.key }.map {
            PeerMessage.Entry(service: $0.key.service, server: $0.key.server, change: $0.value)
        }
        effector.send(PeerMessage(node: node, sentAt: Self.nowMilliseconds(), nonce: nonce, role: pair.role,
                                  configDigest: pair.configDigest, overrides: entries))
    }

    /// An event from keepalived or the peer channel (any thread): handled on the queue, in order.
    func pairEvent(_ event: PairEvent) {
        queue.async { self.handlePairEvent(event) }
    }

    /// The same, returning once handled (tests).
    public func pairEventHandled(_ event: PairEvent) async {
        await onQueue { self.handlePairEvent(event) }
    }

    private func handlePairEvent(_ event: PairEvent) {
        guard var pair = state.pair else { return }
        let now = Self.nowMilliseconds()
        switch event {
        case .vrrp(let vrrp):
            let role: PairStatus.Role
            switch vrrp {
            case .master: role = .master
            case .backup: role = .backup
            case .fault: role = .fault
            case .stop: role = .stopped
            }
            if pair.enter(role, at: now, peerWindow: Self.peerSilence), let transition = pair.lastTransition {
                logger.notice("pair role \(transition.from.rawValue) → \(transition.to.rawValue)",
                              metadata: ["cause": "\(transition.cause)", "node": "\(node)"])
            }
            state.pair = pair
            tellPeer()
        case .keepalivedStopped(let reason):
            if pair.enter(.stopped, at: now, peerWindow: Self.peerSilence) {
                logger.error("pair role → stopped", metadata: ["cause": "\(reason)"])
            }
            state.pair = pair
        case .refused(let refusal, let sender, let count):
            // The channel reports at most once a second: a flood of forged datagrams floods neither queue nor log.
            pair.refusedMessages += count
            state.pair = pair
            logger.warning("peer message refused", metadata: ["from": "\(sender)", "reason": "\(refusal)",
                                                               "refused": "\(count)", "refused_total": "\(pair.refusedMessages)"])
        case .peerMessage(let message):
            if !peerWasReachable { logger.notice("peer reachable", metadata: ["peer": "\(pair.peer)", "role": "\(message.role.rawValue)"]) }
            peerWasReachable = true
            let matchedBefore = pair.configsMatch
            pair.peerLastHeard = now
            pair.peerRole = message.role
            pair.peerConfigDigest = message.configDigest
            if pair.configsMatch == false && matchedBefore != false {
                logger.warning("the peer runs other virtual services than this node (config digests differ); copy lb.yaml to both nodes and reload",
                               metadata: ["peer": "\(pair.peer)"])
            }
            state.pair = pair
            mergePeerOverrides(message.overrides)
        }
    }

    /// The peer's overrides that are newer than this node's become this node's (then applied and saved).
    private func mergePeerOverrides(_ entries: [PeerMessage.Entry]) {
        var merged = false
        for entry in entries {
            let key = ServerKey(service: entry.service, server: entry.server)
            let before = state.admin(key), beforeChange = state.overrideChanges[key]
            guard state.mergeOverride(key, entry.change) else { continue }
            do {
                try publish(service: entry.service)
            } catch {
                // Not half-applied: the state goes back, so the peer's next message (about a second) tries again.
                state.restoreAdmin(key, before, change: beforeChange)
                try? publish(service: entry.service)
                logger.error("the peer's override could not be applied: \(error)", metadata: ["service": "\(entry.service)", "server": "\(entry.server)"])
                continue
            }
            merged = true
            logger.notice("real server \(entry.change.admin.rawValue) (from the peer)",
                          metadata: ["service": "\(entry.service)", "server": "\(entry.server)", "by": "\(entry.change.node)"])
        }
        guard merged else { return }
        do {
            try saveOverrides()
        } catch {
            logger.error("the peer's override was applied but not saved: \(error)")
        }
    }

    /// `lbctl ha standby` / `lbctl ha resume`.
    func setStandbyNow(_ on: Bool) -> ControlResponse {
        guard var pair = state.pair, let effector = effectors.pair else {
            return ControlResponse(ok: false, message: "this node is not part of a pair (no high_availability section)")
        }
        guard pair.standby != on else {
            return ControlResponse(ok: true, message: on ? "already in standby" : "not in standby")
        }
        do {
            try store.update { $0.pairStandby = on }
            try effector.setStandby(on)
        } catch {
            try? store.update { $0.pairStandby = !on }
            return ControlResponse(ok: false, message: "standby could not be \(on ? "set" : "lifted"): \(error); nothing changed")
        }
        pair.standby = on
        state.pair = pair
        logger.notice("\(on ? "pair standby: handing the master role to the peer" : "pair standby lifted")",
                      metadata: ["node": "\(node)"])
        return ControlResponse(ok: true, message: on
            ? "\(node): standby; the peer \(pair.peer) takes the master role (`lbctl ha resume` undoes this)"
            : "\(node): standby lifted; this node is backup now and stays so until the peer fails\(state.configuration.highAvailability?.preempt == true ? " (or, with preempt, until it wins the election)" : "")")
    }

    /// A reload or mode switch changed the config: keepalived gets its new file when it differs.
    func reconfigurePair(from previous: Configuration) {
        guard let effector = effectors.pair, state.pair != nil, state.configuration.highAvailability != nil else { return }
        if var pair = state.pair {
            pair.configDigest = Self.configDigest(state.configuration)
            state.pair = pair
        }
        let files = effector.keepalivedFiles
        guard let next = try? KeepalivedConfig.render(state.configuration, node: node, files: files),
              next != (try? KeepalivedConfig.render(previous, node: node, files: files)) else { return }
        do {
            try effector.reload(keepalivedConfig: next)
        } catch {
            logger.error("keepalived could not be given its new configuration: \(error)")
        }
    }

    /// lbd stops, or a reload removed the pair section: keepalived stops (releasing the VIPs, so the peer takes
    /// over at once) and the peer channel closes.
    func stopPairNow() {
        guard state.pair != nil, let effector = effectors.pair else { return }
        heartbeatTimer?.cancel()
        heartbeatTimer = nil
        effector.stop()
        state.pair = nil
        logger.notice("pair stopped", metadata: ["node": "\(node)"])
    }

    func pairReport() -> PairReport? {
        guard let pair = state.pair, let ha = state.configuration.highAvailability else { return nil }
        let now = Self.nowMilliseconds()
        return PairReport(
            node: pair.node, role: pair.role.rawValue, standby: pair.standby, peer: pair.peer,
            peerAddress: ha.peer(of: node)?.address.description ?? "-",
            peerReachable: pair.peerReachable(now: now, window: Self.peerSilence), peerRole: pair.peerRole?.rawValue,
            peerLastHeardSecondsAgo: pair.peerLastHeard.map { Double(now - $0) / 1000 }, configsMatch: pair.configsMatch,
            lastTransition: pair.lastTransition.map { "\($0.from.rawValue) → \($0.to.rawValue): \($0.cause)" },
            lastTransitionTime: pair.lastTransition.map { Self.timestamp(Date(timeIntervalSince1970: Double($0.at) / 1000)) },
            transitions: pair.transitions, refusedPeerMessages: pair.refusedMessages)
    }
}
