import LBConfig
import LBTLS
import NIOCore
import NIOHTTP1
import NIOPosix

/// The outcome of one probe: pass, or fail with a reason an operator can act on.
public enum ProbeResult: Sendable, Equatable {
    case pass
    case fail(String)
}

/// Where one check goes.
public struct ProbeTarget: Sendable, Hashable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16
    public var description: String { address.withPort(port) }
}

/// Runs one probe of a given kind against a target, on an event loop. Each probe opens its own connection and
/// closes it; a result always arrives, by the timeout at the latest.
enum Probe {
    /// `tls`: the client context of https-get, and the name the server's certificate must carry (SNI).
    static func run(_ probe: HealthCheck.Probe, target: ProbeTarget, timeout: Duration, tls: (TLSContext, String?)?,
                    on eventLoop: EventLoop) -> EventLoopFuture<ProbeResult> {
        let result: EventLoopFuture<ProbeResult>
        switch probe {
        case .none:
            return eventLoop.makeSucceededFuture(.pass)
        case .connect:
            result = connect(target, timeout: timeout, on: eventLoop) { _ in nil }.map { _ in .pass }
        case .httpGet(let http):
            result = httpGet(http, target: target, timeout: timeout, tls: nil, on: eventLoop)
        case .httpsGet(let http):
            guard let tls else { return eventLoop.makeSucceededFuture(.fail("no TLS client context")) }
            result = httpGet(http, target: target, timeout: timeout, tls: tls, on: eventLoop)
        case .dicomEcho(let dicom):
            result = converse(DICOMEchoConversation(callingAE: dicom.callingAE, calledAE: dicom.calledAE),
                              target: target, timeout: timeout, on: eventLoop)
        case .hl7MLLP(let hl7):
            result = converse(HL7MLLPConversation(message: hl7.message), target: target, timeout: timeout, on: eventLoop)
        case .external(let command, let user):
            result = ExternalCheck.run(command, user: user, target: target, timeout: timeout, on: eventLoop)
        }
        return result.flatMapErrorThrowing { error in .fail(describe(error)) }
    }

    /// Opens a TCP connection; `configure` may add handlers and return a future the probe waits for.
    private static func connect(
        _ target: ProbeTarget, timeout: Duration, on eventLoop: EventLoop,
        configure: @escaping @Sendable (Channel) -> EventLoopFuture<ProbeResult>?
    ) -> EventLoopFuture<ProbeResult> {
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: target.address.description, port: Int(target.port))
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        let deadline = NIODeadline.now() + TimeAmount(timeout)
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(timeout))
            .connect(to: address)
            .flatMap { channel in
                guard let exchange = configure(channel) else {
                    return channel.close().map { .pass }
                }
                let timer = channel.eventLoop.scheduleTask(deadline: deadline) {
                    channel.close(promise: nil)
                }
                return exchange.always { _ in
                    timer.cancel()
                    channel.close(promise: nil)
                }.flatMapErrorThrowing { error in
                    if NIODeadline.now() >= deadline { throw ProbeTimeout(timeout: timeout) }
                    throw error
                }
            }
    }

    private static func converse<C: ProbeConversation>(_ conversation: C, target: ProbeTarget, timeout: Duration,
                                                       on eventLoop: EventLoop) -> EventLoopFuture<ProbeResult> {
        connect(target, timeout: timeout, on: eventLoop) { channel in
            let promise = channel.eventLoop.makePromise(of: ProbeResult.self)
            do {
                // Added after connect: the handler opens the conversation itself.
                try channel.pipeline.syncOperations.addHandler(ConversationHandler(conversation, promise: promise))
                channel.writeAndFlush(ByteBuffer(bytes: conversation.opening), promise: nil)
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
            return promise.futureResult
        }
    }

    private static func httpGet(_ http: HealthCheck.HTTPProbe, target: ProbeTarget, timeout: Duration,
                                tls: (TLSContext, String?)?, on eventLoop: EventLoop) -> EventLoopFuture<ProbeResult> {
        connect(target, timeout: timeout, on: eventLoop) { channel in
            let promise = channel.eventLoop.makePromise(of: HTTPResponseSnapshot.self)
            do {
                if let (context, name) = tls {
                    try channel.pipeline.syncOperations.addHandler(
                        TLSHandler(context: context, serverName: name, verifyAddress: target.address.description))
                }
                try channel.pipeline.syncOperations.addHTTPClientHandlers()
                try channel.pipeline.syncOperations.addHandler(HTTPResponseCollector(promise: promise))
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: target.description)
            headers.add(name: "User-Agent", value: "lb-health-check")
            headers.add(name: "Connection", value: "close")
            let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: http.path, headers: headers)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            return promise.futureResult.map { response in
                guard http.expectStatus.contains(Int(response.status.code)) else {
                    return .fail("HTTP status \(response.status.code), expected \(http.expectStatus.map(String.init).joined(separator: " or "))")
                }
                if let expected = http.expectBody, !response.body.contains(expected) {
                    return .fail("response body does not contain \"\(expected)\"")
                }
                return .pass
            }
        }
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case let timeout as ProbeTimeout: return "no answer within \(timeout.timeout.configText)"
        case ChannelError.connectTimeout: return "connect timed out"
        case let error as IOError: return error.description.contains("111") || error.description.lowercased().contains("refused") ? "connection refused" : "\(error)"
        case let error as NIOConnectionError:
            return error.connectionErrors.first.map { describe($0.error) } ?? "\(error)"
        default: return "\(error)"
        }
    }
}

struct ProbeTimeout: Error {
    let timeout: Duration
}

struct HTTPResponseSnapshot {
    var status: HTTPResponseStatus
    var body: String
}

/// Collects a response's status and the first 64 KiB of its body (enough for any status page).
final class HTTPResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<HTTPResponseSnapshot>
    private var status: HTTPResponseStatus?
    private var body = ByteBuffer()
    private static let bodyLimit = 64 * 1024

    init(promise: EventLoopPromise<HTTPResponseSnapshot>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            status = head.status
        case .body(var part):
            if body.readableBytes < Self.bodyLimit {
                var slice = part.readSlice(length: min(part.readableBytes, Self.bodyLimit - body.readableBytes)) ?? ByteBuffer()
                body.writeBuffer(&slice)
            }
        case .end:
            guard let status else { return }
            promise.succeed(HTTPResponseSnapshot(status: status, body: String(buffer: body)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.eof)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}
