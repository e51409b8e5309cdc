import Foundation
import LBConfig
import LBTLS

/// The certificate, key and CA files of a config, checked as lbd will load them: each must exist and be readable,
/// a key must match its certificate, a CA file must load. Errors carry the file:line where the path is written, so
/// a missing certificate is found by `lbctl config check`, not by a start that half happened.
public struct TLSFileChecker: ConfigurationFileChecker {
    public init() {}

    public func diagnostics(for configuration: Configuration, sourceMap: SourceMap) -> [Diagnostic] {
        var found: [Diagnostic] = []
        func error(_ service: String, _ path: ConfigPath, _ message: String, hint: String) {
            found.append(Diagnostic(.error, at: sourceMap.location(of: path), service: service, message, hint: hint))
        }
        /// Whether `file` can be read; if not, the error names it and why.
        func readable(_ service: String, _ path: ConfigPath, _ file: String, what: String) -> Bool {
            var info = stat()
            guard stat(file, &info) == 0 else {
                error(service, path, "\(what) \(file): \(String(cString: strerror(errno)).lowercased())",
                      hint: "put the file there (PEM), or correct the path")
                return false
            }
            guard access(file, R_OK) == 0 else {
                error(service, path, "\(what) \(file) cannot be read: \(String(cString: strerror(errno)).lowercased())",
                      hint: "lbd runs as root by default; check the file's mode and any security policy")
                return false
            }
            return true
        }
        func pair(_ service: String, _ path: ConfigPath, certificate: String, key: String, what: String) {
            let certificateOK = readable(service, path / "certificate", certificate, what: "\(what) certificate")
            let keyOK = readable(service, path / "key", key, what: "\(what) key")
            guard certificateOK, keyOK else { return }
            do {
                try TLSContext.checkPair(certificate: certificate, key: key)
            } catch let failure {
                error(service, path / "key", "\(what): \(failure)",
                      hint: "the key must be the one the certificate was issued for, both in PEM")
            }
        }
        func backend(_ service: String, _ path: ConfigPath, _ settings: BackendTLS) {
            if let ca = settings.caFile, readable(service, path / "ca_file", ca, what: "backend_tls CA file") {
                do {
                    try TLSContext.checkCAFile(ca)
                } catch {
                    found.append(Diagnostic(.error, at: sourceMap.location(of: path / "ca_file"), service: service,
                                            "backend_tls: \(error)", hint: "a PEM file of one or more CA certificates"))
                }
            }
            if let certificate = settings.certificatePath, let key = settings.keyPath {
                pair(service, path, certificate: certificate, key: key, what: "backend_tls client")
            }
        }
        for (index, service) in configuration.virtualServices.enumerated() {
            let path = ConfigPath.virtualService(index)
            if let tls = service.tls {
                pair(service.name, path / "tls", certificate: tls.certificatePath, key: tls.keyPath, what: "tls")
                for (sniIndex, extra) in tls.sniCertificates.enumerated() {
                    pair(service.name, path / "tls" / "sni_certificates" / sniIndex, certificate: extra.certificatePath,
                         key: extra.keyPath, what: "tls sni")
                }
            }
            if let settings = service.backendTLS { backend(service.name, path / "backend_tls", settings) }
            for (serverIndex, server) in service.realServers.enumerated() {
                if let settings = server.backendTLS {
                    backend(service.name, path / "real_servers" / serverIndex / "backend_tls", settings)
                }
            }
        }
        return found
    }
}
