/// How lbd decides that a real server can take traffic.
public struct HealthCheck: Hashable, Sendable {
    public var probe: Probe
    /// nil: check the port the service is reached on.
    public var port: UInt16?
    public var interval: Duration
    public var timeout: Duration
    /// Consecutive passes before a down server takes traffic again.
    public var rise: Int
    /// Consecutive failures before an up server leaves the pool.
    public var fall: Int
    /// Passive detection (HAProxy's `observe`): this many connection failures or 502s in a row from real client
    /// traffic mark a server down at once, without waiting for the active check; the check brings it back. 0: off.
    public var observe: Int

    public static let defaultInterval: Duration = .seconds(2)
    public static let defaultTimeout: Duration = .seconds(1)
    public static let defaultRise = 2
    public static let defaultFall = 3
    /// The user external checks run as: never root, so a check cannot change the load balancer.
    public static let defaultExternalUser = "nobody"

    public init(
        probe: Probe, port: UInt16? = nil, interval: Duration = HealthCheck.defaultInterval,
        timeout: Duration = HealthCheck.defaultTimeout, rise: Int = HealthCheck.defaultRise,
        fall: Int = HealthCheck.defaultFall, observe: Int = 0
    ) {
        self.observe = observe
        self.probe = probe
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
    }

    /// What a check sends and expects; each case carries only the settings that apply to it.
    public enum Probe: Hashable, Sendable {
        case none
        case connect
        case httpGet(HTTPProbe)
        case httpsGet(HTTPProbe)
        case dicomEcho(DICOMEchoProbe)
        case hl7MLLP(HL7Probe)
        /// `command` is a /bin/sh command line; it runs as `user` when lbd runs as root.
        case external(command: String, user: String = HealthCheck.defaultExternalUser)

        public var typeName: String {
            switch self {
            case .none: return "none"
            case .connect: return "connect"
            case .httpGet: return "http-get"
            case .httpsGet: return "https-get"
            case .dicomEcho: return "dicom-echo"
            case .hl7MLLP: return "hl7-mllp"
            case .external: return "external"
            }
        }
    }

    public struct HTTPProbe: Hashable, Sendable {
        public var path: String
        public var expectStatus: [Int]
        public var expectBody: String?

        public static let defaultPath = "/"
        public static let defaultExpectStatus = [200]

        public init(path: String = HTTPProbe.defaultPath, expectStatus: [Int] = HTTPProbe.defaultExpectStatus,
                    expectBody: String? = nil) {
            self.path = path
            self.expectStatus = expectStatus
            self.expectBody = expectBody
        }
    }

    public struct DICOMEchoProbe: Hashable, Sendable {
        public var callingAE: String
        public var calledAE: String

        public static let defaultCallingAE = "LB-CHECK"
        /// dcmtk's storescp answers to this title unless told otherwise.
        public static let defaultCalledAE = "ANY-SCP"

        public init(callingAE: String = DICOMEchoProbe.defaultCallingAE,
                    calledAE: String = DICOMEchoProbe.defaultCalledAE) {
            self.callingAE = callingAE
            self.calledAE = calledAE
        }
    }

    public struct HL7Probe: Hashable, Sendable {
        /// Segments separated by carriage returns, as HL7 v2 wants them on the wire.
        public var message: String

        public static let defaultMessage =
            "MSH|^~\\&|LB|LB|HEALTH|CHECK|20260101000000||QRY^A19|LBCHECK|P|2.3\rQRD|20260101000000|R|I|LBCHECK|||1^RD|CHECK|DEM"

        public init(message: String = HL7Probe.defaultMessage) {
            self.message = message
        }
    }
}
