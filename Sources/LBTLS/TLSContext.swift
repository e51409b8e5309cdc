import COpenSSL

/// Why TLS could not be set up: carries OpenSSL's own reason and the file concerned.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public var description: String

    init(_ what: String) {
        description = "\(what): \(TLSError.drainOpenSSLErrors())"
    }

    /// OpenSSL keeps errors on a per-thread queue; read them all so the next call starts clean.
    static func drainOpenSSLErrors() -> String {
        var reasons: [String] = []
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return reasons.isEmpty ? "unknown OpenSSL error" : reasons.joined(separator: "; ")
    }
}

/// An OpenSSL SSL_CTX: the certificate, key and protocol settings shared by every connection of one role.
/// Immutable once built, which is what makes sharing it across event loops safe (OpenSSL locks internally).
public final class TLSContext: @unchecked Sendable {
    let context: OpaquePointer
    public let role: Role

    public enum Role: Sendable { case server, client }

    /// A server context with certificates chosen by SNI: `default` answers clients that send no name or a name
    /// no other certificate covers; each of `byName` answers the names its certificate lists.
    public static func server(default main: (certificateChain: String, privateKey: String),
                              byName: [(certificateChain: String, privateKey: String)]) throws -> TLSContext {
        let context = try server(certificateChain: main.certificateChain, privateKey: main.privateKey)
        guard !byName.isEmpty else { return context }
        let others = try byName.map { try server(certificateChain: $0.certificateChain, privateKey: $0.privateKey) }
        let pointers = UnsafeMutablePointer<OpaquePointer?>.allocate(capacity: others.count)
        for (index, other) in others.enumerated() { pointers[index] = other.context }
        let table = UnsafeMutablePointer<lb_sni_table>.allocate(capacity: 1)
        table.initialize(to: lb_sni_table(contexts: pointers, count: Int32(others.count)))
        lb_SSL_CTX_set_sni_table(context.context, table)
        context.sni = (others, table)
        return context
    }

    /// The SNI contexts and the table OpenSSL's callback reads; kept alive as long as this context.
    private var sni: (contexts: [TLSContext], table: UnsafeMutablePointer<lb_sni_table>)?

    /// A server context: TLS 1.2 minimum, ALPN http/1.1, no renegotiation.
    public static func server(certificateChain: String, privateKey: String) throws -> TLSContext {
        guard let ctx = SSL_CTX_new(TLS_server_method()) else { throw TLSError("cannot create a TLS context") }
        let context = TLSContext(ctx, role: .server)
        try context.applyCommonSettings()
        guard SSL_CTX_use_certificate_chain_file(ctx, certificateChain) == 1 else {
            throw TLSError("cannot load certificate chain \(certificateChain)")
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, privateKey, SSL_FILETYPE_PEM) == 1 else {
            throw TLSError("cannot load private key \(privateKey)")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw TLSError("private key \(privateKey) does not match certificate \(certificateChain)")
        }
        lb_SSL_CTX_use_http11_alpn(ctx)
        return context
    }

    /// A client context for health checks: the real server's certificate is not verified (checks ask "does it
    /// answer?", and back-end certificates are often self-signed).
    public static func client() throws -> TLSContext {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw TLSError("cannot create a TLS context") }
        let context = TLSContext(ctx, role: .client)
        try context.applyCommonSettings()
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        return context
    }

    private init(_ context: OpaquePointer, role: Role) {
        self.context = context
        self.role = role
    }

    private func applyCommonSettings() throws {
        guard lb_SSL_CTX_set_min_proto_version(context, lb_TLS1_2_VERSION()) == 1 else {
            throw TLSError("cannot require TLS 1.2")
        }
        _ = lb_SSL_CTX_set_mode(context, lb_SSL_MODE_RELEASE_BUFFERS())
        _ = lb_SSL_CTX_set_options(context, lb_SSL_OP_NO_RENEGOTIATION())
    }

    deinit {
        SSL_CTX_free(context)
        if let sni {
            sni.table.pointee.contexts.deallocate()
            sni.table.deallocate()
        }
    }
}
