import CFuzz
import Foundation
import LBConfig
import LBFuzzReplay

/// libFuzzer target (scripts/fuzz config): any bytes as lb.yaml. The loader must not crash, hang or trap, and its
/// report must be coherent: a model exactly when there is no error, every diagnostic inside the file.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let report = ConfigurationLoader.check(yaml: text, file: "fuzz.yaml")
    let hasErrors = report.diagnostics.contains { $0.severity == .error }
    guard (report.configuration == nil) == hasErrors, report.isValid == !hasErrors else {
        fatalError("incoherent report: model \(report.configuration != nil), errors \(hasErrors)")
    }
    let lines = text.sourceLines.count
    for diagnostic in report.diagnostics where diagnostic.location.line < 1 || diagnostic.location.line > max(lines, 1) {
        fatalError("diagnostic outside the file (\(lines) lines): \(diagnostic)")
    }
    return 0
}

#if LB_FUZZ
/// The entry point SwiftPM links as `main`: libFuzzer's driver.
@_cdecl("lb_fuzz_config_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    lb_fuzz_run(argc, argv) { data, size in fuzzConfig(data!, size) }
}
#else
/// Without libFuzzer (a normal build): replays the inputs named on the command line (seed corpus, kept crashes).
@main
struct ReplayConfigInputs {
    static func main() throws { try FuzzReplay.run("config", fuzzConfig) }
}
#endif
