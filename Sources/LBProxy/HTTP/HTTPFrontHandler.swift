import LBConfig
import LBTLS
import Logging
import NIOCore
import NIOHTTP1

/// Proxies the requests of one client connection, one at a time (NIO's pipelining handler holds back the next
/// request until the current response is complete).
///
/// Per request: choose a server (cookie, then source-IP stickiness, then the scheduler), take an idle keep-alive
/// connection to it or open one (moving on to another server if that fails), forward the request with
/// X-Forwarded-For / X-Forwarded-Proto, and stream the response back with the persistence cookie when needed.
/// Both directions respect backpressure: a side is read only while the other can take the bytes.
final class HTTPFrontHandler: ChannelDuplexHandler, ClockedConnection {
    typealias InboundIn = HTTPServerRequestPart
    /// Nothing above this handler writes; it writes the responses' bytes itself (see `ResponseBytes`).
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        /// Between requests; the header timer runs.
        case idle
        /// A request head arrived; waiting for a connection to a real server. The body bytes so far are held (the
        /// head's are in `forwarded`), and reads paused.
        case connecting(buffered: [ByteBuffer], requestEnded: Bool)
        /// Request and response flow between the client and `backend`.
        case forwarding(backend: BackendHandler, requestEnded: Bool)
        /// An error response is being sent, or the connection is closing.
        case closing
    }

    /// Where the service's generation in force is found; read at each request, so a reload's new settings and
    /// pool (a removed server gone, a changed weight) apply to requests of connections opened before it.
    private let slot: ServiceSlot
    private var runtime: ServiceRuntime
    private var service: VirtualService { runtime.service }
    private var connector: BackendConnector { runtime.connector }
    private var logger: Logger { runtime.logger }
    private let scheme: String
    private var state = State.idle
    /// The reader of the client's requests (it holds this handler, which holds it weakly).
    weak var reader: ClientRequestReader?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Per request.
    private var clientKeepAlive = true
    private var clientCookie: PersistenceCookie?
    private var selection: Selection?
    /// A final (non-1xx) response head went to the client.
    private var responseStarted = false
    /// Whether the current request may be sent a second time (RFC 9110 §9.2.2).
    private var requestIdempotent = false
    private var requestMethod = HTTPMethod.GET
    private var clientIsHTTP10 = false
    /// The request being forwarded (its method tells the response parser whether a body follows) and its head's
    /// bytes (kept for a retry); whether its body goes in chunked coding (lb frames each part itself).
    private var forwarded: (method: HTTPMethod, bytes: ByteBuffer)?
    /// The storage the request heads and the response heads are written into, reused while nothing else holds it.
    private var requestHeads = ReusableBuffer()
    private var responseHeads = ReusableBuffer()
    /// How many head buffers the connection keeps (for tests).
    var keptHeadBuffers: Int { (requestHeads.isKept ? 1 : 0) + (responseHeads.isKept ? 1 : 0) }

    private func dropHeadBuffers() {
        requestHeads = ReusableBuffer()
        responseHeads = ReusableBuffer()
    }

    /// Writes a buffer of response bytes taken from `responseHeads`, which keeps it for the next response.
    private func writeKeptResponseBytes(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        responseHeads.keep(bytes)
        context.write(wrapOutboundOut(bytes), promise: nil)
    }
    private var requestChunked = false
    /// The request has a body (until its end, the client may still be sending).
    private var requestHasBody = false
    /// The response's length is unknown to an HTTP/1.0 client (no Content-Length): only the close can end it.
    private var closeAfterResponse = false
    /// The real server's response ends by its own framing, so its connection can carry another exchange.
    private var backendResponseDelimited = true

    /// `headerDeadline`: when the first head must have arrived (counted from the connection, by
    /// `WaitingClientHandler`, which adds this handler once the client sends something); `clock`: the connection's
    /// loop's, which the waiting handler already looked up.
    init(runtime: ServiceRuntime, slot: ServiceSlot, scheme: String, headerDeadline: NIODeadline,
         clock: ConnectionClock) {
        self.runtime = runtime
        self.slot = slot
        self.scheme = scheme
        self.firstHeaderDeadline = headerDeadline
        self.clock = clock
    }

    private let firstHeaderDeadline: NIODeadline

    /// Between requests: moves to the generation in force if a reload replaced this one (an l7-http generation
    /// only: after a switch to l7-tcp, an open HTTP connection finishes on the settings it started with).
    private func followReload(on eventLoop: EventLoop) {
        let current = slot.current
        guard current !== runtime, current.service.mode == .l7HTTP else { return }
        runtime = current
        idleConnections = IdleConnections.forLoop(eventLoop, pool: current.pool)
    }

    // MARK: Lifecycle

    /// This loop's keep-alive connections for the service, looked up once per client connection.
    private var idleConnections: IdleConnections?

    /// The client's address (and the VIP port it used) never change on a connection: work them out once.
    private lazy var peer: (address: IPAddress?, text: String, vipPort: UInt16) = {
        let address = IPAddress(context?.channel.remoteAddress)
        return (address, address?.description ?? "unknown", UInt16(context?.channel.localAddress?.port ?? 0))
    }()

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        idleConnections = IdleConnections.forLoop(context.eventLoop, pool: runtime.pool)
        nextIdleCheck = .now() + idleCheckPeriod
        armTimer(at: firstHeaderDeadline, reason: "request head not received in time")
    }

    // MARK: Idle timeout

    /// Bumped by every read from the client and every write to it: the idle check compares it instead of reading
    /// the clock on every event (NIO's IdleStateHandler would cost a handler hop and a promise per write).
    private var activity = 0
    private var activityAtLastCheck = -1
    private var silentChecks = 0
    private var queuedAtLastCheck = 0
    private var nextIdleCheck = NIODeadline.now()
    /// The connection is checked four times per idle period and closed after four silent checks in a row: after
    /// between 1 and 1.25 times `timeouts.idle` of silence in both directions.
    private static let idleChecksPerPeriod = 4
    private var idleCheckPeriod: TimeAmount {
        .nanoseconds(runtime.clientTimeouts.idle.nanoseconds / Int64(Self.idleChecksPerPeriod))
    }

    /// Returns false if it closed the connection.
    private func checkIdle() -> Bool {
        guard let context else { return false }
        // Bytes still queued for the client that it has since taken count too (a slow download whose queue drains
        // while lb has nothing new to write): NIO's IdleStateHandler counted completed writes the same way.
        let queued = (try? context.channel.syncOptions?.getOption(.bufferedWritableBytes)) ?? 0
        let drained = queued < queuedAtLastCheck
        queuedAtLastCheck = queued
        if activity != activityAtLastCheck || drained {
            activityAtLastCheck = activity
            silentChecks = 0
        } else {
            silentChecks += 1
            // A connection silent for a check period keeps no head buffers, nor TLS buffers (a plain connection's
            // pipeline has no TLSHandler and ignores the event). With the default timeouts a silent keep-alive
            // connection is closed at the header timeout first, taking them along.
            dropHeadBuffers()
            if silentChecks == 1 { context.triggerUserOutboundEvent(TLSReleaseKeptBuffers(), promise: nil) }
            if silentChecks >= Self.idleChecksPerPeriod {
                logger.debug("closing idle client connection", metadata: ["client": "\(peer.text)"])
                closeNow()
                return false
            }
        }
        return true
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        clock.remove(self)
        self.context = nil
    }

    /// A request the parser refused (or a failure of the connection): the client gets a 400 if no response has
    /// begun, and the connection does not carry on.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard error is HTTPParserError else {
            disarmTimer()
            closeNow()
            return
        }
        // After a request that ends the connection (`Connection: close`, HTTP/1.0 without keep-alive) nothing more
        // is read: llhttp refuses what follows it, but that request is still answered, then the connection closes
        // (lb's own reader never reads past it either).
        switch state {
        case .connecting(_, requestEnded: true) where !clientKeepAlive, .forwarding(_, requestEnded: true) where !clientKeepAlive:
            logger.debug("bytes after the last request of the connection ignored: \(error)", metadata: ["client": "\(peer.text)"])
            sentPastLastRequest = true
            return
        default:
            break
        }
        logger.info("malformed request refused: \(error)", metadata: ["client": "\(peer.text)"])
        switch state {
        case .closing:
            break
        case .forwarding where responseStarted && heldHead == nil:
            // Part of a response is on its way: it cannot be followed by a 400.
            closeNow()
        case .idle, .connecting, .forwarding:
            sendError(.badRequest, "Bad Request\n")
        }
    }

    /// The client sent bytes after the request that ends the connection.
    private var sentPastLastRequest = false

    /// Whether the client may still be sending when lb ends the connection after the current exchange: the request
    /// is not complete, the client expected the connection to stay open (it may have sent the next request), or it
    /// has sent more already. Then the connection ends with a lingering close (`LingeringClose`).
    private func clientMaySendMore(requestEnded: Bool) -> Bool {
        !requestEnded || clientKeepAlive || sentPastLastRequest || !pipelined.isEmpty || reader?.hasUnreadBytes == true
    }

    /// Ends the exchange at once: the real-server side is released, the client connection closed.
    private func closeNow() {
        abandonExchange()
        context?.close(promise: nil)
    }

    /// The exchange in progress ends here: its real-server connection is closed and released, nothing held is sent.
    private func abandonExchange() {
        if case .forwarding(let backend, _) = state { backend.close() }
        finishSelection()
        heldHead = nil
        state = .closing
    }


    /// The connection is closed: it leaves the clock and does not join it again.
    private var isInactive = false

    func channelInactive(context: ChannelHandlerContext) {
        isInactive = true
        clock.remove(self)
        if case .forwarding(let backend, _) = state {
            // The client went away mid-exchange: the backend connection is in an unknown state.
            backend.close()
        }
        finishSelection()
        state = .closing
        context.fireChannelInactive()
    }

    /// The slowloris guard: a head (or the next body piece) must arrive before `deadline`.
    private var deadline: NIODeadline?
    private var deadlineReason = ""

    /// One place on the loop's `ConnectionClock` per connection serves both guards: it wakes the connection at the
    /// earlier of the request deadline and the next idle check. Arming, moving or dropping a deadline is a store.
    private let clock: ConnectionClock
    var clockPosition: Int?

    private func armTimer(_ duration: TimeAmount, reason: String) {
        armTimer(at: NIODeadline.now() + duration, reason: reason)
    }

    private func armTimer(at deadline: NIODeadline, reason: String) {
        self.deadline = deadline
        deadlineReason = reason
        scheduleWake()
    }

    private func disarmTimer() {
        deadline = nil
    }

    /// Wakes the connection at the earlier of the deadline and the next idle check. A disarmed deadline leaves the
    /// wake where it was: the wake finds nothing due but the idle check, and moves on.
    private func scheduleWake() {
        guard context != nil, !isInactive else { return }
        var when = nextIdleCheck
        if let deadline, deadline < when { when = deadline }
        clock.wake(self, at: when)
    }

    func wake() {
        guard context != nil, !isInactive else {
            clock.remove(self)
            return
        }
        let now = NIODeadline.now()
        if let deadline, now >= deadline {
            self.deadline = nil
            // The 408 may wait on a client that never reads: the idle check below keeps running until the
            // connection is gone, and closes it then.
            requestTimedOut(deadlineReason)
        }
        if now >= nextIdleCheck {
            // The next check a period after this one was due, not after the clock's tick noticed it: the tick's
            // lateness does not add up over the checks of an idle timeout.
            nextIdleCheck = nextIdleCheck + idleCheckPeriod
            if nextIdleCheck <= now { nextIdleCheck = now + idleCheckPeriod }
            guard checkIdle() else { return }
        }
        scheduleWake()
    }

    private func requestTimedOut(_ reason: String) {
        logger.info("closing slow client: \(reason)", metadata: ["client": "\(context?.channel.remoteAddress?.description ?? "?")"])
        switch state {
        case .idle:
            // No complete head yet. The close does not wait for the write: a TLS handshake that stalled halfway
            // would hold it forever, and the point is to free the socket.
            sendError(.requestTimeout, "Request Timeout\n", ending: .closeAtOnce)
        case .connecting:
            sendError(.requestTimeout, "Request Timeout\n", ending: .closeOnceWritten)
        case .forwarding(let backend, let requestEnded):
            guard !requestEnded else { return }
            backend.close()
            if responseStarted && heldHead == nil {
                context?.close(promise: nil)
            } else {
                sendError(.requestTimeout, "Request Timeout\n", ending: .closeOnceWritten)
            }
        case .closing:
            break
        }
    }

    // MARK: Client → real server

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        activity &+= 1
        handle(unwrapInboundIn(data), context: context)
    }

    /// Pipelined requests (a head arriving while one is in progress) wait here, and reading pauses, until the
    /// current response is complete; responses therefore leave in request order.
    private var pipelined: [HTTPServerRequestPart] = []

    private func handle(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        if !pipelined.isEmpty {
            pipelined.append(part)
            return
        }
        if case .head = part, !isIdle {
            pipelined.append(part)
            return
        }
        switch part {
        case .head(let head):
            startRequest(head, context: context)
        case .body(let body):
            armTimer(runtime.clientTimeouts.body, reason: "request body stalled")
            forward(RequestBytes.body(body, chunked: requestChunked, allocator: context.channel.allocator), ended: false)
        case .end(let trailers):
            disarmTimer()
            forward(RequestBytes.end(trailers: trailers?.forwardableTrailers(), chunked: requestChunked,
                                     allocator: context.channel.allocator), ended: true)
        }
    }

    /// A request read by NIO's parser (one not of the simple form, and every later one on its connection).
    private func startRequest(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard case .idle = state else { return }
        followReload(on: context.eventLoop)
        let framing: BodyFraming
        do {
            framing = try head.checkedForForwarding()
        } catch {
            logger.info("request refused: \(error)", metadata: ["client": "\(peer.text)"])
            if case .unsupportedMethod = error {
                sendError(.methodNotAllowed, "Method Not Allowed\n")
            } else {
                sendError(.badRequest, "Bad Request\n")
            }
            return
        }
        var cookie: PersistenceCookie?
        if case .httpCookie(let name) = service.persistence { cookie = head.headers.cookie(named: name).flatMap(PersistenceCookie.init) }
        // The body goes out exactly as lb's parser delimited it; the head is written from the client's fields.
        let headBytes = RequestBytes.forwarded(head, framing: framing, forwardedFor: forwardedFor,
                                               into: &requestHeads, allocator: context.channel.allocator)
        begin(method: head.method, isHTTP10: head.version.major == 1 && head.version.minor == 0,
              keepAlive: head.isKeepAlive && !head.asksForUpgrade, cookie: cookie, headBytes: headBytes,
              chunked: framing == .chunked, hasBody: framing != .unframed && framing != .contentLength(0),
              context: context)
    }

    /// Whether the next request can start now (`ClientRequestReader` holds it back until then).
    var isReadyForRequest: Bool { isIdle && pipelined.isEmpty }

    /// A request of the simple form read by `ClientRequestReader`: `bytes` begin with its head, whose field lines
    /// are `fields`. Its body follows through `requestBody` and `requestEnd`.
    /// False if it was not taken (the handler was not idle).
    @discardableResult
    func startRequest(_ head: SimpleRequestHead, fields: [FieldSpan], bytes: ByteBuffer) -> Bool {
        guard let context, case .idle = state else { return false }
        activity &+= 1
        followReload(on: context.eventLoop)
        var cookie: PersistenceCookie?
        let forwardedFor = self.forwardedFor
        let headBytes = bytes.withUnsafeReadableBytes { raw in
            if case .httpCookie(let name) = service.persistence {
                cookie = SimpleRequestHead.persistenceCookie(named: name, in: fields, of: raw)
            }
            return RequestBytes.forwarded(simple: head, fields: fields, head: raw, forwardedFor: forwardedFor,
                                          into: &requestHeads, allocator: context.channel.allocator)
        }
        begin(method: head.method, isHTTP10: head.isHTTP10, keepAlive: head.keepAlive, cookie: cookie,
              headBytes: headBytes, chunked: false, hasBody: (head.contentLength ?? 0) > 0, context: context)
        return true
    }

    /// Body bytes of a simple request, as they came (its Content-Length frames them).
    func requestBody(_ bytes: ByteBuffer) {
        activity &+= 1
        armTimer(runtime.clientTimeouts.body, reason: "request body stalled")
        forward(bytes, ended: false)
    }

    /// The simple request is complete.
    func requestEnd() {
        disarmTimer()
        forward(nil, ended: true)
    }

    /// X-Forwarded-For's client and X-Forwarded-Proto, when the service adds them.
    private var forwardedFor: (client: String, proto: String)? {
        service.forwardedFor && peer.address != nil ? (peer.text, scheme) : nil
    }

    /// What both readers' requests have in common from here: the exchange's settings, the head's bytes kept for a
    /// retry, then a real server.
    private func begin(method: HTTPMethod, isHTTP10: Bool, keepAlive: Bool, cookie: PersistenceCookie?, headBytes: ByteBuffer,
                       chunked: Bool, hasBody: Bool, context: ChannelHandlerContext) {
        armTimer(runtime.clientTimeouts.body, reason: "request body stalled")
        clientKeepAlive = keepAlive
        clientIsHTTP10 = isHTTP10
        requestMethod = method
        requestIdempotent = method.isIdempotent
        responseStarted = false
        closeAfterResponse = false
        backendResponseDelimited = true
        clientCookie = cookie
        requestHeads.keep(headBytes)
        forwarded = (method, headBytes)
        requestChunked = chunked
        requestHasBody = hasBody
        state = .connecting(buffered: [], requestEnded: false)  // an empty array allocates nothing

        let client = peer.address
        let port = peer.vipPort
        requestOrigin = (client, port)
        guard let chosen = connector.pool.select(client: client, cookie: cookie, port: port) else {
            logger.error("no real server for request", metadata: ["uri": "\(requestTarget)"])
            sendError(.serviceUnavailable, "Service Unavailable\n")
            return
        }
        if let reused = idleConnections?.take(for: chosen) {
            attach(backend: reused, selection: chosen, reused: true)
            return
        }
        connectFresh(to: chosen, client: client, port: port)
    }

    /// The current request's target, for the log: read from the head lb forwards ("METHOD target HTTP/1.1").
    private var requestTarget: String {
        guard let bytes = forwarded?.bytes, let space = bytes.readableBytesView.firstIndex(of: UInt8(ascii: " ")) else { return "?" }
        let rest = bytes.readableBytesView[(space + 1)...]
        let end = rest.firstIndex(of: UInt8(ascii: " ")) ?? rest.endIndex
        return String(decoding: rest[..<end], as: UTF8.self)
    }

    /// Opens a new real-server connection for the current request (moving on to other servers if it is refused).
    private func connectFresh(to chosen: Selection, client: IPAddress?, port: UInt16) {
        guard let context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        connector.connect(to: chosen, client: client, port: port, on: context.eventLoop, countsWireBytes: true) { channel, meter in
            do {
                try BackendHandler.addClientCodec(to: channel.pipeline.syncOperations, meter: meter)
                return channel.eventLoop.makeSucceededVoidFuture()
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.whenComplete { result in
            let front = loopBound.value
            switch result {
            case .success(let (channel, selection)):
                guard let backend = try? channel.pipeline.syncOperations.handler(type: BackendHandler.self) else {
                    channel.close(promise: nil)
                    front.connector.pool.release(selection)
                    front.sendError(.badGateway, "Bad Gateway\n")
                    return
                }
                front.attach(backend: backend, selection: selection, reused: false)
            case .failure(let error):
                front.logger.error("no real server for request: \(error)", metadata: ["uri": "\(front.requestTarget)"])
                front.sendError(.serviceUnavailable, "Service Unavailable\n")
            }
        }
    }

    /// A kept-alive connection can be closed by the real server just as we reuse it. Until the first response
    /// byte, a copy of the request (if small) is kept so it can be sent again on a fresh connection.
    private var retryCopy: [ByteBuffer]?  // the body bytes; the head's stay in `forwarded`
    private var retryCopyBytes = 0
    private static let retryCopyLimit = 64 * 1024
    private var requestOrigin: (client: IPAddress?, port: UInt16)?

    private func attach(backend: BackendHandler, selection: Selection, reused: Bool) {
        guard case .connecting(let buffered, let requestEnded) = state else {
            // The client left while we were connecting.
            connector.pool.release(selection)
            backend.close()
            return
        }
        self.selection = selection
        backend.front = self
        state = .forwarding(backend: backend, requestEnded: requestEnded)
        retryCopy = reused ? buffered : nil
        retryCopyBytes = buffered.reduce(0) { $0 + $1.readableBytes }
        if let forwarded { backend.writeHead(method: forwarded.method, bytes: forwarded.bytes) }
        for bytes in buffered { backend.write(bytes) }
        backend.flush()
        if pendingRead, !holdsRequests, !isBlockedOnBackend {
            pendingRead = false
            context?.read()
        }
    }

    /// Sends (or holds, while connecting) the next bytes of the request; `ended`: they complete it.
    private func forward(_ bytes: ByteBuffer?, ended: Bool) {
        switch state {
        case .connecting(var buffered, let requestEnded):
            if let bytes {
                state = .closing  // so `buffered` is the array's only reference and grows in place
                buffered.append(bytes)
            }
            state = .connecting(buffered: buffered, requestEnded: requestEnded || ended)
        case .forwarding(let backend, let requestEnded):
            state = .forwarding(backend: backend, requestEnded: requestEnded || ended)
            guard let bytes else { return }
            backend.write(bytes)
            if retryCopy != nil {
                retryCopyBytes += bytes.readableBytes
                if retryCopyBytes > Self.retryCopyLimit { retryCopy = nil } else { retryCopy?.append(bytes) }
            }
        case .idle, .closing:
            break
        }
    }

    private var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// Called when a response is complete on a kept-alive connection: serve what was pipelined behind it.
    private func replayPipelined(context: ChannelHandlerContext) {
        if !pipelined.isEmpty {
            let parts = pipelined
            pipelined = []
            for part in parts { handle(part, context: context) }
        }
        reader?.frontIsReady()
        // No channelReadComplete follows a replay: flush what was forwarded.
        if case .forwarding(let backend, _) = state { backend.flush() }
        if !holdsRequests, pendingRead, isIdle || !isBlockedOnBackend {
            pendingRead = false
            context.read()
        }
    }

    private var isBlockedOnBackend: Bool {
        switch state {
        case .connecting: return true
        case .forwarding(let backend, let requestEnded): return !requestEnded && !backend.isWritable
        case .idle, .closing: return false
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .forwarding(let backend, _) = state { backend.flush() }
        context.fireChannelReadComplete()
    }

    /// A next request waits (here, or in the reader) for the current one to finish.
    private var holdsRequests: Bool { !pipelined.isEmpty || reader?.holdsNextRequest == true }

    /// Reads from the client only while the real server can take what we read.
    func read(context: ChannelHandlerContext) {
        if holdsRequests || isBlockedOnBackend {
            pendingRead = true
        } else {
            context.read()
        }
    }

    func backendBecameWritable() {
        if pendingRead, !holdsRequests, case .forwarding = state {
            pendingRead = false
            context?.read()
        }
    }

    // MARK: Real server → client

    /// A response head read by NIO's parser (one not of the simple form, and every later one on its connection).
    func responseHead(_ head: HTTPResponseHead) {
        guard let context, case .forwarding(let backend, _) = state, !responseStarted else { return }
        // The server has read (some of) the request: it is never sent again.
        retryCopy = nil
        forwarded = nil
        let code = head.status.code
        if code == 101 {
            refuseResponse(MessageRefusal.unexpectedUpgrade(code), from: backend)
            return
        }
        let framing: BodyFraming
        do {
            framing = try head.headers.bodyFraming()
        } catch {
            refuseResponse(error, from: backend)
            return
        }
        if (100..<200).contains(code) {
            // Interim (100 Continue, 103 Early Hints): an HTTP/1.0 client would take it for the final answer.
            guard !clientIsHTTP10 else { return }
            activity &+= 1
            let outbound = ForwardedResponseHead(head: head, framing: .unframed)
            context.writeAndFlush(wrapOutboundOut(ResponseBytes.forwarded(outbound, allocator: context.channel.allocator)), promise: nil)
            return
        }
        startResponse(.parsed(head), code: code, framing: framing)
    }

    /// A response head of the simple form read by `RealServerResponseReader`: `bytes` begin with the head, whose
    /// field lines are `fields`. Its body follows through `responseBody` and `responseEnd`.
    func responseHead(_ head: SimpleResponseHead, fields: [FieldSpan], bytes: ByteBuffer) {
        guard case .forwarding = state, !responseStarted else { return }
        retryCopy = nil
        forwarded = nil
        startResponse(.simple(head, fields: fields, bytes: bytes), code: head.status.code, framing: head.statedFraming)
    }

    /// A final response head from either reader: what lb writes is decided here, and written from the server's own
    /// fields when the head leaves (`ResponseBytes`).
    private func startResponse(_ source: ForwardedResponseHead.Source, code: UInt, framing: BodyFraming) {
        var outbound = ForwardedResponseHead(source, framing: .unframed)
        responseStarted = true
        responseChunked = false
        if requestMethod.isHEAD || code == 304 {
            // No body follows; a length states what a GET would return.
            if case .contentLength = framing { outbound.framing = framing }
        } else if code == 204 {
            outbound.framing = .unframed
        } else {
            switch framing {
            case .contentLength:
                outbound.framing = framing
            case .chunked, .unframed:
                backendResponseDelimited = framing == .chunked
                if clientIsHTTP10 {
                    // HTTP/1.0 has no chunked coding: the close marks the end.
                    closeAfterResponse = true
                } else {
                    outbound.framing = .chunked
                    responseChunked = true
                }
            }
        }
        if !clientKeepAlive || closeAfterResponse {
            outbound.connection = "close"
        } else if clientIsHTTP10 {
            // A 1.0 client closes unless told the connection stays open.
            outbound.connection = "keep-alive"
        }
        if case .httpCookie(let name) = service.persistence, let selection, let value = selection.cookieValue,
           selection.cookie != clientCookie {
            outbound.setCookie = (name, value, secure: scheme == "https")
        }
        heldHead = outbound
    }

    /// The final response head, held until the end of the server's read that carried it: if what follows in that
    /// read is malformed (a bad chunk size), the client can still get a 502 instead of a cut-off response.
    private var heldHead: ForwardedResponseHead?
    /// The response to the client is sent in chunked coding (lb frames each body part itself).
    private var responseChunked = false

    private func writeHeldHead() {
        // Moved out, not copied and then dropped (the head holds the server's fields and bytes).
        guard let context, let head = heldHead.take() else { return }
        writeKeptResponseBytes(ResponseBytes.forwarded(head, into: &responseHeads, allocator: context.channel.allocator),
                               context: context)
    }

    func responseBody(_ body: ByteBuffer) {
        guard let context else { return }
        activity &+= 1
        let size = body.readableBytes
        // A response to HEAD has no body, whatever arrives (the real-server parser delivers none).
        guard size > 0, !requestMethod.isHEAD else { return }
        let small = size <= ResponseBytes.copyLimit
        // The head (if not yet sent), the chunk framing and a small body leave in one buffer.
        var framing: ByteBuffer
        if let head = heldHead.take() {
            framing = ResponseBytes.forwarded(head, extra: small ? size + 12 : 12, into: &responseHeads,
                                              allocator: context.channel.allocator)
        } else if responseChunked {
            framing = responseHeads.take(capacity: small ? size + 12 : 12, allocator: context.channel.allocator)
        } else {
            context.write(wrapOutboundOut(body), promise: nil)  // a delimited body goes as it came, uncopied
            return
        }
        if responseChunked { MessageBytes.writeChunkSize(size, to: &framing) }
        if small {
            var body = body
            framing.writeBuffer(&body)
            if responseChunked { framing.writeStaticString("\r\n") }
            writeKeptResponseBytes(framing, context: context)
            return
        }
        writeKeptResponseBytes(framing, context: context)
        context.write(wrapOutboundOut(body), promise: nil)
        if responseChunked {
            var end = context.channel.allocator.buffer(capacity: 2)
            end.writeStaticString("\r\n")
            context.write(wrapOutboundOut(end), promise: nil)
        }
    }

    func responseFlush() {
        writeHeldHead()
        context?.flush()
    }

    var clientWritable: Bool { context?.channel.isWritable ?? false }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, case .forwarding(let backend, _) = state { backend.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    /// The response is complete: recycle the real-server connection if both sides allow it.
    func responseEnd(_ trailers: HTTPHeaders?, backendReusable: Bool) {
        guard let context, case .forwarding(let backend, let requestEnded) = state else { return }
        let selection = self.selection.take()
        if backendReusable, backendResponseDelimited, requestEnded, let selection, selection.serverIndex != nil {
            backend.front = nil
            idleConnections?.put(backend, selection: selection, pool: connector.pool)
        } else {
            backend.close()
            if let selection { connector.pool.release(selection) }
        }
        state = .idle
        writeHeldHead()
        activity &+= 1
        let keepAlive = clientKeepAlive && requestEnded && !closeAfterResponse
        // No next head: the buffers go with their last bytes (and what is written below is not appended to a
        // buffer kept here, which would copy it).
        if !keepAlive { dropHeadBuffers() }
        if responseChunked {
            responseChunked = false
            let last = MessageBytes.lastChunk(trailers: trailers?.forwardableTrailers(), allocator: context.channel.allocator)
            context.write(wrapOutboundOut(last), promise: nil)
        }
        context.flush()
        if keepAlive {
            armTimer(runtime.clientTimeouts.header, reason: "request head not received in time")
            replayPipelined(context: context)
        } else {
            // An answer before the request's end leaves the body timer armed: the connection is ending anyway.
            disarmTimer()
            let lingers = clientMaySendMore(requestEnded: requestEnded)
            state = .closing
            pipelined = []
            if lingers { closeLingering(context: context) } else { closeOnceWritten(context: context) }
        }
    }

    /// Closes the connection without a reset while the client may still be sending: see `LingeringClose`, which
    /// goes in before the request reader, so nothing the client sends from here reaches a parser.
    private func closeLingering(context: ChannelHandlerContext) {
        guard let reader, (try? context.pipeline.syncOperations.addHandler(LingeringClose(), name: "lingering-close", position: .before(reader))) != nil else {
            closeOnceWritten(context: context)
            return
        }
    }

    /// Closes the connection once what was written to it has gone to the socket (a close fails what is still
    /// queued): at once when the flush wrote it all, as it does for a response the socket takes whole, without a
    /// promise and its callback per connection; otherwise when an empty write queued behind the rest completes.
    private func closeOnceWritten(context: ChannelHandlerContext) {
        let channel = context.channel
        guard context.hasNoQueuedWrites else {
            context.afterQueuedWrites { _ in channel.close(promise: nil) }
            return
        }
        channel.close(promise: nil)
    }

    /// The real server failed or closed before the response was complete.
    func backendFailed(_ error: Error?) {
        guard case .forwarding(_, let requestEnded) = state else { return }
        // A reused connection that the server closed or reset before a byte of response (it timed out its idle
        // connection as we sent): an idempotent request is sent again on a fresh connection. Anything else — a
        // POST, a malformed answer, an interim response already seen — is never repeated (RFC 9110 §9.2.2).
        let closedWithoutAnswer = error == nil || error is IOError || error is ChannelError
        if !responseStarted, requestIdempotent, closedWithoutAnswer, let copy = retryCopy, let origin = requestOrigin,
           let failed = selection {
            retryCopy = nil
            connector.pool.release(failed)
            selection = nil
            state = .connecting(buffered: copy, requestEnded: requestEnded)
            guard let chosen = connector.pool.select(client: origin.client, cookie: clientCookie, port: origin.port) else {
                sendError(.serviceUnavailable, "Service Unavailable\n")
                return
            }
            connectFresh(to: chosen, client: origin.client, port: origin.port)
            return
        }
        logger.warning("real server connection ended early", metadata: [
            "server": "\(selection?.name ?? "?")", "reason": "\(error.map { "\($0)" } ?? "closed")"])
        if let selection { connector.pool.observe(selection, failure: "connection ended before the response (502)") }
        finishSelection()
        if heldHead != nil {
            // Nothing of the response has left yet: the client can still be told properly.
            heldHead = nil
            responseStarted = false
        }
        if responseStarted {
            // Part of the response is already on its way: the only honest signal left is to close.
            state = .closing
            context?.close(promise: nil)
        } else {
            sendError(.badGateway, "Bad Gateway\n")
        }
    }

    /// The real server's response cannot be forwarded as it is: 502, and neither connection carries on.
    private func refuseResponse(_ reason: Error, from backend: BackendHandler) {
        logger.warning("malformed response from real server: \(reason)", metadata: ["server": "\(selection?.name ?? "?")"])
        if let selection { connector.pool.observe(selection, failure: "malformed response (502)") }
        backend.close()
        sendError(.badGateway, "Bad Gateway\n")
    }

    private func finishSelection() {
        if let selection = selection.take() { connector.pool.release(selection) }
    }

    // MARK: Errors

    /// How a connection ends after an error response.
    private enum Ending {
        /// At once: the flush hands the bytes to the socket before the close, if it can take them (a client too
        /// slow to send a head is not waited for).
        case closeAtOnce
        /// Once the response is written (a slow client is not lingered for).
        case closeOnceWritten
        /// Once the response is written, lingering if the client may still be sending (`clientMaySendMore`).
        case lingerIfClientMaySendMore
    }

    /// Sends a small error response and ends the connection.
    private func sendError(_ status: HTTPResponseStatus, _ text: String, ending: Ending = .lingerIfClientMaySendMore) {
        disarmTimer()
        heldHead = nil
        guard let context else { return }
        let requestEnded: Bool
        switch state {
        case .connecting(_, let ended), .forwarding(_, let ended): requestEnded = ended || !requestHasBody
        case .idle: requestEnded = false  // refused before or within its head
        case .closing:
            // The connection is ending after an answer already (a connection attempt that ends after it, say):
            // no second one.
            return
        }
        let lingers = ending == .lingerIfClientMaySendMore && clientMaySendMore(requestEnded: requestEnded)
        abandonExchange()
        pipelined = []
        responseChunked = false
        let response = ResponseBytes.error(status, text, allocator: context.channel.allocator)
        context.writeAndFlush(wrapOutboundOut(response), promise: nil)
        switch ending {
        case .closeAtOnce: context.close(promise: nil)
        case .closeOnceWritten: closeOnceWritten(context: context)
        case .lingerIfClientMaySendMore:
            if lingers { closeLingering(context: context) } else { closeOnceWritten(context: context) }
        }
    }
}
