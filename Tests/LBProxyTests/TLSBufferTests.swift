import Foundation
import LBTLS
import NIOCore
import NIOEmbedded
import Testing

/// `TLSHandler` writes each plaintext read and each ciphertext send into the storage of the one before, once nothing
/// else holds it, and never over bytes something still holds. Real OpenSSL on both ends (the bundled demo
/// certificate), two embedded channels, the bytes pumped between them.
@Suite("TLS buffers")
struct TLSBufferTests {
    static let certificates = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("examples/certs")

    /// What the server's pipeline passed up: each read's bytes and the address of its storage.
    final class Reads: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var texts: [String] = []
        var storages: [UInt] = []
        var held: [ByteBuffer] = []
        var holdReads = false
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            texts.append(String(buffer: buffer))
            storages.append(storage(buffer))
            if holdReads { held.append(buffer) }  // as a decoder holding part of a request would
        }
    }

    struct Connection {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let reads: Reads

        init() throws {
            let server = try TLSContext.server(certificateChain: TLSBufferTests.certificates.appendingPathComponent("demo-viewer.pem").path,
                                               privateKey: TLSBufferTests.certificates.appendingPathComponent("demo-viewer.key").path)
            reads = Reads()
            self.server = EmbeddedChannel()
            try self.server.pipeline.syncOperations.addHandlers([TLSHandler(context: server), reads])
            client = EmbeddedChannel(handler: TLSHandler(context: try TLSContext.client()))
            try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
            try self.server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
            try pump()
        }

        /// Moves ciphertext both ways until neither side has more to send. Returns the server's sends.
        @discardableResult
        func pump() throws -> [ByteBuffer] {
            var serverSends: [ByteBuffer] = []
            var moved = true
            while moved {
                moved = false
                while let bytes = try client.readOutbound(as: ByteBuffer.self) {
                    try server.writeInbound(bytes)
                    moved = true
                }
                while let bytes = try server.readOutbound(as: ByteBuffer.self) {
                    serverSends.append(bytes)
                    try client.writeInbound(bytes)
                    moved = true
                }
            }
            while try client.readInbound(as: ByteBuffer.self) != nil {}
            return serverSends
        }

        func clientSends(_ text: String) throws {
            try client.writeAndFlush(ByteBuffer(string: text)).wait()
            try pump()
        }
    }

    /// Buffers of the same size held while a freed one could be handed out again: an address seen twice is then
    /// storage kept and reused, not malloc's recycling.
    static func occupyFreedStorage(capacity: Int) -> [ByteBuffer] {
        (0..<8).map { _ in ByteBufferAllocator().buffer(capacity: capacity) }
    }

    @Test func readsReuseTheirStorageOnceTheDecoderLetsGo() throws {
        let connection = try Connection()
        try connection.clientSends("GET /a HTTP/1.1\r\n\r\n")
        let blockers = Self.occupyFreedStorage(capacity: 512)
        try connection.clientSends("GET /b HTTP/1.1\r\n\r\n")
        #expect(connection.reads.texts == ["GET /a HTTP/1.1\r\n\r\n", "GET /b HTTP/1.1\r\n\r\n"])
        #expect(connection.reads.storages.count == 2)
        #expect(connection.reads.storages.first == connection.reads.storages.last, "the second read took new storage")
        withExtendedLifetime(blockers) {}
    }

    @Test func aReadStillHeldIsNeverWrittenOver() throws {
        let connection = try Connection()
        connection.reads.holdReads = true
        try connection.clientSends("GET /a HTTP/1.1\r\n\r\n")
        try connection.clientSends("GET /b HTTP/1.1\r\n\r\n")
        #expect(Set(connection.reads.storages).count == 2)
        #expect(connection.reads.held.map { String(buffer: $0) } == ["GET /a HTTP/1.1\r\n\r\n", "GET /b HTTP/1.1\r\n\r\n"])
    }

    @Test func sendsReuseTheirStorageOnceTheSocketLetsGo() throws {
        let connection = try Connection()
        try connection.server.writeAndFlush(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")).wait()
        var first: [ByteBuffer]? = try connection.pump()  // the client has read it: the socket would let go now
        let firstStorage = try #require(first?.last.map(storage))
        let capacity = first?.last?.capacity ?? 0
        first = nil
        let blockers = Self.occupyFreedStorage(capacity: capacity)
        try connection.server.writeAndFlush(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb")).wait()
        let second = try connection.pump()
        #expect(second.count == 1)
        #expect(second.last.map(storage) == firstStorage, "the second send took new storage")
        withExtendedLifetime(blockers) {}
    }

    /// A silent connection is told to give its buffers back (HTTPFrontHandler's idle check sends the event); the
    /// next exchange works as before and keeps new ones.
    @Test func releasedBuffersAreGivenBack() throws {
        let connection = try Connection()
        try connection.clientSends("GET /a HTTP/1.1\r\n\r\n")
        try connection.server.writeAndFlush(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")).wait()
        try connection.pump()
        let handler = try connection.server.pipeline.syncOperations.handler(type: TLSHandler.self)
        #expect(handler.keptBuffers == 2)
        try connection.server.pipeline.triggerUserOutboundEvent(TLSReleaseKeptBuffers()).wait()
        #expect(handler.keptBuffers == 0)
        try connection.clientSends("GET /b HTTP/1.1\r\n\r\n")
        #expect(connection.reads.texts.last == "GET /b HTTP/1.1\r\n\r\n")
        #expect(handler.keptBuffers == 1)
    }

    @Test func aSendStillQueuedIsNeverWrittenOver() throws {
        let connection = try Connection()
        try connection.server.writeAndFlush(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")).wait()
        // Held as a slow client's socket would hold it, before it reaches the client.
        let queued = try #require(try connection.server.readOutbound(as: ByteBuffer.self))
        let queuedBytes = Array(queued.readableBytesView)
        try connection.server.writeAndFlush(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb")).wait()
        let next = try #require(try connection.server.readOutbound(as: ByteBuffer.self))
        #expect(storage(next) != storage(queued))
        #expect(Array(queued.readableBytesView) == queuedBytes)
        // Both still decrypt, in order, on the client.
        try connection.client.writeInbound(queued)
        try connection.client.writeInbound(next)
        let plaintext = [try connection.client.readInbound(as: ByteBuffer.self), try connection.client.readInbound(as: ByteBuffer.self)]
        #expect(plaintext.map { $0.map { String(buffer: $0) } } == ["HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
                                                                  "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"])
    }
}

private func storage(_ buffer: ByteBuffer) -> UInt { buffer.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) } }

/// A close of the sending side only (lb's lingering close): close_notify goes out after what was written, nothing
/// more can be written, and the peer is still read until its own close_notify ends the connection.
@Suite("TLS close of the sending side")
struct TLSOutputCloseTests {
    /// Stands in for the socket's shutdown(SHUT_WR), which an embedded channel does not have (it closes whole).
    final class OutputCloses: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var count = 0
        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            guard mode == .output else { return context.close(mode: mode, promise: promise) }
            count += 1
            promise?.succeed(())
        }
    }

    @Test func closeNotifyGoesOutAndThePeerIsStillRead() throws {
        let connection = try TLSBufferTests.Connection()
        let closes = OutputCloses()
        try connection.server.pipeline.syncOperations.addHandler(closes, position: .first)
        connection.server.write(ByteBuffer(string: "HTTP/1.1 503 Service Unavailable\r\n\r\n"), promise: nil)
        try connection.server.close(mode: .output).wait()
        #expect(closes.count == 1, "the socket's output is shut down after close_notify is written")
        #expect(connection.server.isActive)
        #expect(throws: ChannelError.outputClosed) { try connection.server.writeAndFlush(ByteBuffer(string: "late")).wait() }
        // The client, not yet aware, sends more of its request: the server still reads it.
        try connection.client.writeAndFlush(ByteBuffer(string: "more of the body")).wait()
        while let bytes = try connection.client.readOutbound(as: ByteBuffer.self) { try connection.server.writeInbound(bytes) }
        #expect(connection.reads.texts.last == "more of the body")
        // The client reads the answer, then close_notify, and closes.
        while let bytes = try connection.server.readOutbound(as: ByteBuffer.self) { try connection.client.writeInbound(bytes) }
        #expect(try connection.client.readInbound(as: ByteBuffer.self).map { String(buffer: $0) } == "HTTP/1.1 503 Service Unavailable\r\n\r\n")
        #expect(!connection.client.isActive)
        // Its end of stream ends the server's connection too: the final close sends no second close_notify.
        try connection.server.close().wait()
        #expect(try connection.server.readOutbound(as: ByteBuffer.self) == nil)
        #expect(!connection.server.isActive)
    }
}

/// OpenSSL reads the ciphertext straight from the channel's buffers (`TLSTransport`): however the socket cuts the
/// records, a byte at a time or several in one read, the handshake completes and every byte of plaintext arrives
/// once, in order.
@Suite("TLS transport")
struct TLSTransportTests {
    /// Client and server handlers on embedded channels, not yet connected.
    static func pair() throws -> (client: EmbeddedChannel, server: EmbeddedChannel, reads: TLSBufferTests.Reads) {
        let certificates = TLSBufferTests.certificates
        let context = try TLSContext.server(certificateChain: certificates.appendingPathComponent("demo-viewer.pem").path,
                                            privateKey: certificates.appendingPathComponent("demo-viewer.key").path)
        let reads = TLSBufferTests.Reads()
        let server = EmbeddedChannel()
        try server.pipeline.syncOperations.addHandlers([TLSHandler(context: context), reads])
        let client = EmbeddedChannel(handler: TLSHandler(context: try TLSContext.client()))
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        return (client, server, reads)
    }

    /// Everything `from` has sent, as one buffer.
    static func sent(by channel: EmbeddedChannel) throws -> ByteBuffer {
        var all = ByteBuffer()
        while var bytes = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&bytes) }
        return all
    }

    /// Plaintext the client has read.
    static func clientReads(_ client: EmbeddedChannel) throws -> String {
        var text = ""
        while let bytes = try client.readInbound(as: ByteBuffer.self) { text += String(buffer: bytes) }
        return text
    }

    @Test func recordsCutIntoSingleBytesAreReadWhole() throws {
        let (client, server, reads) = try Self.pair()
        // The handshake, then two requests, each flight given to the server a byte at a time.
        for _ in 0..<4 {
            var flight = try Self.sent(by: client)
            while let byte = flight.readSlice(length: 1) { try server.writeInbound(byte) }
            try client.writeInbound(try Self.sent(by: server))
        }
        try client.writeAndFlush(ByteBuffer(string: "GET /a HTTP/1.1\r\n\r\n")).wait()
        try client.writeAndFlush(ByteBuffer(string: "GET /b HTTP/1.1\r\n\r\n")).wait()
        var requests = try Self.sent(by: client)
        #expect(requests.readableBytes > 80, "two records, each with its header and tag")
        while let byte = requests.readSlice(length: 1) { try server.writeInbound(byte) }
        #expect(reads.texts.joined() == "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        // And the answer, cut the same way on the client's side.
        try server.writeAndFlush(ByteBuffer(string: "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")).wait()
        var answer = try Self.sent(by: server)
        while let byte = answer.readSlice(length: 1) { try client.writeInbound(byte) }
        #expect(try Self.clientReads(client) == "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")
    }

    @Test func severalRecordsInOneReadAreAllRead() throws {
        let (client, server, reads) = try Self.pair()
        // The client's hello, then the server's answer, then the end of the client's handshake together with
        // three requests it sent without waiting (TLS 1.3 allows it): one read for all of them.
        try server.writeInbound(try Self.sent(by: client))
        try client.writeInbound(try Self.sent(by: server))
        for path in ["a", "b", "c"] { try client.writeAndFlush(ByteBuffer(string: "GET /\(path) HTTP/1.1\r\n\r\n")).wait() }
        try server.writeInbound(try Self.sent(by: client))
        #expect(reads.texts.joined() == "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n")
        // Two answers written before one flush leave as one record; both arrive.
        server.write(ByteBuffer(string: "HTTP/1.1 204 No Content\r\n\r\n"), promise: nil)
        server.write(ByteBuffer(string: "HTTP/1.1 204 No Content\r\n\r\n"), promise: nil)
        server.flush()
        try client.writeInbound(try Self.sent(by: server))
        #expect(try Self.clientReads(client) == "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    }
}

/// A socket write that fails closes a channel at once, in the middle of the handler's call: its channelInactive frees
/// the TLS session. Nothing may read the session after such a write (found by attack: a ClientHello followed by a
/// reset crashed lbd, the handshake's flush failing and SSL_get_error reading the freed session).
@Suite("TLS session freed by a failed write")
struct TLSFailedWriteTests {
    /// Stands in for a socket whose peer has reset: the first flush that carries bytes closes the channel, as NIO
    /// does when write(2) fails.
    final class ResetSocket: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var written = 0
        var closes = 0
        /// Whether the peer has reset yet.
        var armed = true
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            if armed { written += unwrapOutboundIn(data).readableBytes }
            context.write(data, promise: promise)
        }
        func flush(context: ChannelHandlerContext) {
            guard armed, written > 0 else { return context.flush() }
            closes += 1
            context.close(promise: nil)
        }
    }

    /// The client's first flight, from a real OpenSSL client.
    static func clientHello() throws -> ByteBuffer {
        let client = EmbeddedChannel(handler: TLSHandler(context: try TLSContext.client()))
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        return try TLSTransportTests.sent(by: client)
    }

    static func server() throws -> (EmbeddedChannel, ResetSocket, TLSBufferTests.Reads) {
        let certificates = TLSBufferTests.certificates
        let context = try TLSContext.server(certificateChain: certificates.appendingPathComponent("demo-viewer.pem").path,
                                            privateKey: certificates.appendingPathComponent("demo-viewer.key").path)
        let reset = ResetSocket()
        let reads = TLSBufferTests.Reads()
        let server = EmbeddedChannel()
        try server.pipeline.syncOperations.addHandlers([reset, TLSHandler(context: context), reads])
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        return (server, reset, reads)
    }

    @Test func aHandshakeWhoseAnswerCannotBeSentClosesCleanly() throws {
        let (server, reset, reads) = try Self.server()
        try server.writeInbound(try Self.clientHello())
        #expect(reset.closes == 1, "the server's answer to the hello was flushed")
        #expect(!server.isActive)
        #expect(reads.texts.isEmpty)
        // What arrives after the close is ignored, not read from a freed session.
        try? server.writeInbound(try Self.clientHello())
        #expect(!server.isActive)
    }

    /// A record that does not decrypt (here, one byte of a request changed on the way) ends the connection with the
    /// alert OpenSSL writes for it, as RFC 8446 asks, not with a silent close.
    @Test func aRecordThatDoesNotDecryptIsAnsweredWithAnAlert() throws {
        let connection = try TLSBufferTests.Connection()
        try connection.client.writeAndFlush(ByteBuffer(string: "GET /a HTTP/1.1\r\n\r\n")).wait()
        var record = try TLSTransportTests.sent(by: connection.client)
        let last = record.writerIndex - 1
        record.setInteger(record.getInteger(at: last, as: UInt8.self)! ^ 0x01, at: last)  // the tag's last byte
        #expect(throws: (any Error).self) { try connection.server.writeInbound(record) }
        #expect(connection.reads.texts.isEmpty)
        #expect(!connection.server.isActive)
        let alert = try TLSTransportTests.sent(by: connection.server)
        #expect(alert.readableBytes > 0, "the server sent nothing before closing")
        // The client reads it as the end of the connection.
        _ = try? connection.client.writeInbound(alert)
        #expect(!connection.client.isActive)
    }

    /// What the handlers above see, in order.
    final class Events: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var seen: [String] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { seen.append("read") }
        func errorCaught(context: ChannelHandlerContext, error: Error) { seen.append("error") }
        func channelInactive(context: ChannelHandlerContext) { seen.append("inactive") }
    }

    /// A record that does not decrypt, from a peer that has reset by the time the alert is flushed: the handlers
    /// above get the error before the close (a real server's connection must end as failed, not as a clean close
    /// of a kept-alive connection, which lb would retry without counting a failure).
    @Test func theErrorReachesTheHandlersAboveBeforeTheClose() throws {
        let certificates = TLSBufferTests.certificates
        let context = try TLSContext.server(certificateChain: certificates.appendingPathComponent("demo-viewer.pem").path,
                                            privateKey: certificates.appendingPathComponent("demo-viewer.key").path)
        let reset = ResetSocket()
        reset.armed = false
        let events = Events()
        let server = EmbeddedChannel()
        try server.pipeline.syncOperations.addHandlers([reset, TLSHandler(context: context), events])
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        let client = EmbeddedChannel(handler: TLSHandler(context: try TLSContext.client()))
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        for _ in 0..<3 {
            try server.writeInbound(try TLSTransportTests.sent(by: client))
            try client.writeInbound(try TLSTransportTests.sent(by: server))
        }
        try client.writeAndFlush(ByteBuffer(string: "GET /a HTTP/1.1\r\n\r\n")).wait()
        var record = try TLSTransportTests.sent(by: client)
        let last = record.writerIndex - 1
        record.setInteger(record.getInteger(at: last, as: UInt8.self)! ^ 0x01, at: last)
        reset.armed = true
        _ = try? server.writeInbound(record)
        #expect(reset.closes == 1, "the alert was flushed")
        #expect(events.seen == ["error", "inactive"])
    }

    /// With `verify: none` OpenSSL still records its verdict on the certificate; a handshake that fails for
    /// another reason (here the server's last handshake record arrives damaged) is reported with that reason, not
    /// as a certificate that was not accepted.
    @Test func aFailedHandshakeWithoutVerificationGivesItsOwnReason() throws {
        let certificates = TLSBufferTests.certificates
        let context = try TLSContext.server(certificateChain: certificates.appendingPathComponent("demo-viewer.pem").path,
                                            privateKey: certificates.appendingPathComponent("demo-viewer.key").path)
        let server = EmbeddedChannel(handler: TLSHandler(context: context))
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
        let client = EmbeddedChannel(handler: TLSHandler(context: try TLSContext.client(verify: false, caFile: nil,
                                                                                        certificate: nil, key: nil)))
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 443)).wait()
        try server.writeInbound(try TLSTransportTests.sent(by: client))
        var flight = try TLSTransportTests.sent(by: server)
        let last = flight.writerIndex - 1
        flight.setInteger(flight.getInteger(at: last, as: UInt8.self)! ^ 0x01, at: last)  // the Finished record's tag
        let error = #expect(throws: (any Error).self) { try client.writeInbound(flight) }
        let reason = "\(error.map { "\($0)" } ?? "")"
        #expect(reason.contains("TLS handshake failed"), "\(reason)")
        #expect(!reason.contains("certificate"), "\(reason)")
    }
}
