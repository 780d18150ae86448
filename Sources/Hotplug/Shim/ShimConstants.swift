import CHotplug

// The C shim's constants, mapped to and from the plain Swift types above the shim: only this folder sees them.
// The mappings name every constant rather than assume that both sides number alike, so a value that changes on
// one side cannot silently mean something else on the other.

extension RunState {
    /// The run state of a `CHP_RUN_*` value (an unknown value reads as `.none`).
    init(shimValue value: UInt32) {
        switch Int(value) {
        case Int(CHP_RUN_OFFLINE): self = .offline
        case Int(CHP_RUN_RUNNING): self = .running
        case Int(CHP_RUN_POLLING): self = .polling
        case Int(CHP_RUN_IDLE): self = .idle
        case Int(CHP_RUN_STOPPED): self = .stopped
        default: self = .none
        }
    }

    /// The `CHP_RUN_*` value of this run state.
    var shimValue: UInt32 {
        switch self {
        case .none: return UInt32(CHP_RUN_NONE)
        case .offline: return UInt32(CHP_RUN_OFFLINE)
        case .running: return UInt32(CHP_RUN_RUNNING)
        case .polling: return UInt32(CHP_RUN_POLLING)
        case .idle: return UInt32(CHP_RUN_IDLE)
        case .stopped: return UInt32(CHP_RUN_STOPPED)
        }
    }
}

extension SIGPOrder {
    /// The `CHP_SIGP_*` code of this order. A code the runtime does not model passes through unchanged (the shim
    /// answers it with an invalid-order status, as S/390 does).
    var shimCode: Int32 {
        switch self {
        case .sense: return Int32(CHP_SIGP_SENSE)
        case .externalCall: return Int32(CHP_SIGP_EXTERNAL_CALL)
        case .emergencySignal: return Int32(CHP_SIGP_EMERGENCY_SIGNAL)
        case .start: return Int32(CHP_SIGP_START)
        case .stop: return Int32(CHP_SIGP_STOP)
        case .restart: return Int32(CHP_SIGP_RESTART)
        case .stopAndStoreStatus: return Int32(CHP_SIGP_STOP_AND_STORE_STATUS)
        case .initialCPUReset: return Int32(CHP_SIGP_INITIAL_CPU_RESET)
        case .cpuReset: return Int32(CHP_SIGP_CPU_RESET)
        case .conditionalEmergencySignal: return Int32(CHP_SIGP_COND_EMERGENCY_SIGNAL)
        case .senseRunning: return Int32(CHP_SIGP_SENSE_RUNNING)
        default: return Int32(rawValue)
        }
    }
}

extension SIGPStatus {
    /// The status bits of a `CHP_STATUS_*` combination (bits the shim does not define are dropped).
    init(shimBits bits: UInt32) {
        self = []
        for (shim, status) in SIGPStatus.shimBits where bits & shim != 0 { insert(status) }
    }

    private static let shimBits: [(UInt32, SIGPStatus)] = [
        (UInt32(CHP_STATUS_INVALID_ORDER), .invalidOrder),
        (UInt32(CHP_STATUS_CHECK_STOP), .checkStop),
        (UInt32(CHP_STATUS_STOPPED), .stopped),
        (UInt32(CHP_STATUS_EXT_CALL_PENDING), .externalCallPending),
        (UInt32(CHP_STATUS_INVALID_PARAMETER), .invalidParameter),
        (UInt32(CHP_STATUS_INCORRECT_STATE), .incorrectState),
        (UInt32(CHP_STATUS_NOT_RUNNING), .notRunning),
    ]
}

extension SIGPResult {
    /// The result of a `chp_sigp_result_t` (a condition code outside 0...3 reads as not operational).
    init(shim result: chp_sigp_result_t) {
        self.init(conditionCode: ConditionCode(rawValue: Int(result.cc)) ?? .notOperational,
                  status: SIGPStatus(shimBits: result.status))
    }
}

extension ControlBlock.Lifecycle {
    /// The lifecycle of a `CHP_LIFE_*` word, nil for an unknown one.
    init?(shimValue value: UInt32) {
        switch Int(value) {
        case Int(CHP_LIFE_PARKED): self = .parked
        case Int(CHP_LIFE_ONLINE): self = .online
        case Int(CHP_LIFE_OFFLINE): self = .offline
        case Int(CHP_LIFE_EXIT): self = .exit
        default: return nil
        }
    }

    /// The `CHP_LIFE_*` word of this lifecycle.
    var shimValue: UInt32 {
        switch self {
        case .parked: return UInt32(CHP_LIFE_PARKED)
        case .online: return UInt32(CHP_LIFE_ONLINE)
        case .offline: return UInt32(CHP_LIFE_OFFLINE)
        case .exit: return UInt32(CHP_LIFE_EXIT)
        }
    }
}
