import COpenSSL
import NIOCore

/// Reported through the pipeline once a TLS handshake has completed.
public struct TLSHandshakeCompleted: Sendable, Equatable {
    /// The protocol agreed by ALPN, if any ("http/1.1").
    public var negotiatedProtocol: String?
    /// "TLSv1.2", "TLSv1.3".
    public var version: String
}

/// Sent down a pipeline (`triggerUserOutboundEvent`) when its connection has fallen silent: `TLSHandler` lets go of
/// the buffers it keeps for the next read and send, so an idle connection holds neither their memory nor the last
/// request's plaintext.
public struct TLSReleaseKeptBuffers: Sendable {
    public init() {}
}

/// TLS on a NIO channel with the system OpenSSL: OpenSSL reads the ciphertext from the socket out of the channel's
/// buffers, and plaintext comes out of SSL_read; plaintext writes go into SSL_write, and the ciphertext OpenSSL
/// writes is sent on (`TLSTransport`). OpenSSL never touches the socket, so NIO keeps control of I/O and
/// backpressure. Closing sends close_notify first.
public final class TLSHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State {
        case handshaking, open
        /// close_notify was sent (a close of the output): nothing more is written, the peer is still read.
        case outputClosed
        case closed
    }

    private let tlsContext: TLSContext
    private let serverName: String?
    private var ssl: OpaquePointer?
    /// OpenSSL's I/O, read and written by its BIOs' callbacks during OpenSSL's calls.
    var transport = TLSTransport()
    private var state = State.handshaking
    private var handshakeStarted = false
    /// Plaintext written before the handshake finished.
    private var pendingWrites: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var pendingFlush = false
    /// The alert of a failure is written but not yet flushed (see `fail`).
    private var alertUnsent = false
    /// Small plaintext writes since the last flush (an HTTP response's head, body and end are three), encrypted
    /// together at the flush: one TLS record and one socket write instead of one per write. Writes that would make
    /// it larger than a record are encrypted at once, in order.
    private var unflushed: ByteBuffer?
    private var unflushedPromises: [EventLoopPromise<Void>] = []
    private static let recordSize = 16 * 1024
    /// The buffer of the last plaintext read, written over by the next read once nothing else holds it (the
    /// decoder above has consumed it), as the transport does with the last ciphertext sent: a kept-alive
    /// connection then takes no new buffer per exchange, and nothing still held is written over.
    private var plaintextReads = ReusableBuffer()
    /// How many buffers are kept (for tests).
    package var keptBuffers: Int { (plaintextReads.isKept ? 1 : 0) + (transport.keepsOutputBuffer ? 1 : 0) }

    /// How long a close waits for close_notify to be written (see `close`).
    private let closeNotifyWait: TimeAmount

    /// A client verifying its peer checks this address against the certificate when no `serverName` is given.
    private let verifyAddress: String?

    /// `serverName` is sent as SNI by a client, and (with a verifying context) must be named by the certificate;
    /// without it, `verifyAddress` must be.
    public init(context: TLSContext, serverName: String? = nil, verifyAddress: String? = nil,
                closeNotifyWait: TimeAmount = .seconds(5)) {
        self.tlsContext = context
        self.closeNotifyWait = closeNotifyWait
        self.serverName = serverName
        self.verifyAddress = verifyAddress
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        transport.allocator = context.channel.allocator
        let session = SSL_new(tlsContext.context), reads = TLSTransport.bio(for: self), writes = TLSTransport.bio(for: self)
        guard let ssl = session, let readBIO = reads, let writeBIO = writes else {
            if let reads { BIO_free(reads) }
            if let writes { BIO_free(writes) }
            if let session { SSL_free(session) }
            context.fireErrorCaught(TLSError("cannot create a TLS session"))
            context.close(promise: nil)
            return
        }
        SSL_set_bio(ssl, readBIO, writeBIO)  // the SSL object now owns both BIOs
        self.ssl = ssl
        switch tlsContext.role {
        case .server:
            SSL_set_accept_state(ssl)
        case .client:
            SSL_set_connect_state(ssl)
            if let serverName { _ = lb_SSL_set_tlsext_host_name(ssl, serverName) }
            if tlsContext.verifies {
                if let serverName {
                    _ = SSL_set1_host(ssl, serverName)
                } else if let verifyAddress {
                    _ = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), verifyAddress)
                }
            }
            if context.channel.isActive { advanceHandshake(context: context) }
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        freeSession()
    }

    deinit {
        // The session's BIOs point at this handler; NIO removes every handler before dropping it, but the
        // session must never outlive it.
        if let ssl { SSL_free(ssl) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        if tlsContext.role == .client { advanceHandshake(context: context) }
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        state = .closed
        failPendingWrites(ChannelError.ioOnClosedChannel)
        freeSession()
        context.fireChannelInactive()
    }

    // MARK: Inbound: ciphertext in, plaintext up

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard ssl != nil, state != .closed else { return }
        transport.received(unwrapInboundIn(data))
        if state == .handshaking { advanceHandshake(context: context) }
        if state == .open || state == .outputClosed { readPlaintext(context: context) }
        transport.releaseReadInput()
    }

    private func advanceHandshake(context: ChannelHandlerContext) {
        guard let ssl, state == .handshaking else { return }
        handshakeStarted = true
        // OpenSSL's error queue is per thread and shared by every connection of this event loop: what an earlier
        // call left there must not be read as this call's reason (SSL_get_error consults it).
        lb_ERR_clear()
        let result = SSL_do_handshake(ssl)
        // Everything the outcome needs is read from the session before its bytes go out: a write that fails (a
        // peer that has reset) closes the channel at once, and channelInactive frees the session.
        var completed: TLSHandshakeCompleted?
        var failure: TLSError?
        if result == 1 {
            completed = TLSHandshakeCompleted(negotiatedProtocol: negotiatedProtocol(ssl),
                                              version: String(cString: SSL_get_version(ssl)))
        } else {
            let error = SSL_get_error(ssl, result)
            if error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE {
                failure = TLSError.handshake(tlsContext.role, verifies: tlsContext.verifies, session: ssl)
            }
        }
        sendCiphertext(context: context, promise: nil)  // the handshake's flight, or the alert of a failed one
        context.flush()
        guard self.ssl != nil, state == .handshaking else { return }  // closed by that flush
        if let completed {
            state = .open
            context.fireUserInboundEventTriggered(completed)
            let writes = pendingWrites
            pendingWrites = []
            for (buffer, promise) in writes { encrypt(buffer, context: context, promise: promise) }
            if pendingFlush || !writes.isEmpty { context.flush() }
        } else if let failure {
            fail(context: context, failure)
        }
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        while state == .open || state == .outputClosed {
            // The plaintext is no longer than the ciphertext received and not yet read (plus what OpenSSL decrypted
            // earlier): a buffer of that size, not of a whole record, for the small requests of a keep-alive
            // connection. With nothing waiting there is nothing to read.
            // (SSL_has_pending also counts a record OpenSSL holds in part; reading it needs more ciphertext.)
            guard let ssl else { return }  // freed by a close from above, during the last read
            let available = transport.unreadInput + Int(max(SSL_pending(ssl), 0))
            guard available > 0 || SSL_has_pending(ssl) == 1 else {
                sendOpenSSLsOwn(context: context)
                return
            }
            let capacity = min(max(available, 512), Self.recordSize)
            var buffer = plaintextReads.take(capacity: capacity, allocator: context.channel.allocator)
            var result: Int32 = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: capacity) { pointer in
                lb_ERR_clear()
                result = SSL_read(ssl, pointer.baseAddress, Int32(pointer.count))
                return max(Int(result), 0)
            }
            plaintextReads.keep(buffer)  // written into or not (a partial record), it serves the next read
            if result > 0 {
                context.fireChannelRead(wrapInboundOut(buffer))
                continue
            }
            let error = SSL_get_error(ssl, result)
            switch error {
            case SSL_ERROR_WANT_READ:
                sendOpenSSLsOwn(context: context)
                return
            case SSL_ERROR_ZERO_RETURN:
                // The peer sent close_notify: it will send nothing more.
                context.close(promise: nil)
                return
            default:
                fail(context: context, TLSError("TLS read failed"))
                return
            }
        }
    }

    // MARK: Outbound: plaintext down, ciphertext out

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let plaintext = unwrapOutboundIn(data)
        switch state {
        case .handshaking:
            pendingWrites.append((plaintext, promise))
        case .open:
            bufferUntilFlush(plaintext, context: context, promise: promise)
        case .outputClosed:
            promise?.fail(ChannelError.outputClosed)
        case .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        if state == .handshaking {
            pendingFlush = true
        } else {
            encryptUnflushed(context: context)
            context.flush()
        }
    }

    private func bufferUntilFlush(_ plaintext: ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        // An empty write (a promise to complete after what went before, as when a response ends before a close)
        // adds nothing to what is buffered: its promise joins theirs, and the buffer is not touched (appending to
        // it would copy it if its writer still holds it).
        if plaintext.readableBytes == 0, unflushed != nil {
            if let promise { unflushedPromises.append(promise) }
            return
        }
        if let buffered = unflushed, buffered.readableBytes + plaintext.readableBytes > Self.recordSize {
            encryptUnflushed(context: context)
        }
        if plaintext.readableBytes >= Self.recordSize {
            encrypt(plaintext, context: context, promise: promise)
            return
        }
        if var buffered = unflushed {
            unflushed = nil  // so the append below does not copy the buffer
            buffered.writeImmutableBuffer(plaintext)
            unflushed = buffered
        } else {
            unflushed = plaintext
        }
        if let promise { unflushedPromises.append(promise) }
    }

    /// Encrypts the plaintext held since the last flush, its writes' promises completed with that write.
    private func encryptUnflushed(context: ChannelHandlerContext) {
        guard let plaintext = unflushed else { return }
        unflushed = nil
        var promise: EventLoopPromise<Void>?
        if let first = unflushedPromises.first {
            for other in unflushedPromises.dropFirst() { first.futureResult.cascade(to: other) }
            promise = first
            unflushedPromises.removeAll(keepingCapacity: true)
        }
        encrypt(plaintext, context: context, promise: promise)
    }

    public func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is TLSReleaseKeptBuffers else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        dropKeptBuffers()
        promise?.succeed(())
    }

    /// Sends close_notify, then closes the connection (`.all`), or only its sending side (`.output`: the peer is
    /// still read, and its own close_notify ends the connection).
    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // What was written before the close goes before close_notify, as an unbuffered write would have.
        if state == .open { encryptUnflushed(context: context) }
        if mode != .input, state == .open, let ssl {
            state = mode == .all ? .closed : .outputClosed
            lb_ERR_clear()
            _ = SSL_shutdown(ssl)
            // The channel fails what is still queued when it closes, so close_notify (and anything before it) would
            // be lost to a client that reads slowly: the close waits until it is written, or `closeNotifyWait`
            // at most for a client that does not read at all.
            let written = context.eventLoop.makePromise(of: Void.self)
            sendCiphertext(context: context, promise: written)
            context.flush()
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let deadline = context.eventLoop.scheduleTask(in: closeNotifyWait) { written.fail(ChannelError.ioOnClosedChannel) }
            written.futureResult.whenComplete { _ in
                deadline.cancel()
                bound.value.close(mode: mode, promise: promise)
            }
            return
        }
        if mode == .all, state == .outputClosed { state = .closed }
        flushAlert(context: context)  // a handler above closing on the error `fail` passed up
        context.close(mode: mode, promise: promise)
    }

    private func encrypt(_ plaintext: ByteBuffer, context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard let ssl else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        var failed = false
        plaintext.withUnsafeReadableBytes { bytes in
            guard bytes.count > 0 else { return }
            // Without partial-write mode SSL_write consumes all of it or fails.
            lb_ERR_clear()
            failed = SSL_write(ssl, bytes.baseAddress, Int32(bytes.count)) <= 0
        }
        if failed {
            promise?.fail(TLSError("TLS write failed"))
            fail(context: context, TLSError("TLS write failed"))
            return
        }
        sendCiphertext(context: context, promise: promise)
    }

    /// What OpenSSL wrote of its own while reading (the refusal of a TLS 1.2 renegotiation, say) goes out at once,
    /// not with the next response or the idle close. Nothing to send, nothing flushed (no system call).
    private func sendOpenSSLsOwn(context: ChannelHandlerContext) {
        if sendCiphertext(context: context, promise: nil) { context.flush() }
    }

    /// Moves whatever OpenSSL produced into the channel; whether there was anything.
    @discardableResult
    private func sendCiphertext(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) -> Bool {
        guard ssl != nil else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return false
        }
        guard let ciphertext = transport.takeOutput() else {
            // Nothing to send (an empty write): its promise must still complete after the writes before it, which
            // may be queued in the channel (a caller that closes on it would otherwise cut them off).
            if let promise { context.write(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: promise) }
            return false
        }
        context.write(wrapOutboundOut(ciphertext), promise: promise)
        return true
    }

    private func negotiatedProtocol(_ ssl: OpaquePointer) -> String? {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    private func fail(context: ChannelHandlerContext, _ error: TLSError) {
        state = .closed
        // The alert OpenSSL wrote for the failure (a bad record MAC, a record too long) tells the peer why, as
        // RFC 8446 asks, before the close. It is flushed after the error has reached the handlers above: the flush
        // may close the channel at once (a peer that has reset), and they must see the error before the close, or
        // a real server's failure would look like a clean close of a kept-alive connection (retried, not counted).
        alertUnsent = sendCiphertext(context: context, promise: nil)
        failPendingWrites(error)
        context.fireErrorCaught(error)
        flushAlert(context: context)
        context.close(promise: nil)
    }

    /// Sends the alert of a failure, if the close the error led to above has not gone out already.
    private func flushAlert(context: ChannelHandlerContext) {
        guard alertUnsent else { return }
        alertUnsent = false
        context.flush()
    }

    private func failPendingWrites(_ error: Error) {
        let writes = pendingWrites
        pendingWrites = []
        for (_, promise) in writes { promise?.fail(error) }
        let promises = unflushedPromises
        unflushed = nil
        unflushedPromises = []
        for promise in promises { promise.fail(error) }
    }

    private func dropKeptBuffers() {
        plaintextReads = ReusableBuffer()
        transport.dropKeptBuffers()
    }

    private func freeSession() {
        dropKeptBuffers()
        if let ssl { SSL_free(ssl) }  // frees the BIOs too
        ssl = nil
        transport = TLSTransport()
    }
}
