//! Host bindings of the contract versions this host serves: `qu:plugin@0.1.0`
//! (`checker`, `sink`) and `qu:plugin@0.2.0` (`v2`). Both share the sink's
//! TCP connection type; the imports are implemented once for both
//! (`host::imports!`).

pub mod checker {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
        world: "qu:plugin/checker",
        imports: { default: async },
        exports: { default: async },
    });
}

pub mod sink {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
        world: "qu:plugin/sink",
        imports: { default: async },
        exports: { default: async },
        with: {
            "qu:plugin/types": super::checker::qu::plugin::types,
            "qu:plugin/log": super::checker::qu::plugin::log,
            "qu:plugin/tcp.connection": crate::host::TcpConnection,
        },
    });
}

pub use checker::qu::plugin::types;

/// `qu:plugin@0.2.0`: settings declare destinations.
pub mod v2 {
    pub mod checker {
        wasmtime::component::bindgen!({
            path: "../../wit/0.2.0",
            world: "qu:plugin/checker",
            imports: { default: async },
            exports: { default: async },
        });
    }

    pub mod sink {
        wasmtime::component::bindgen!({
            path: "../../wit/0.2.0",
            world: "qu:plugin/sink",
            imports: { default: async },
            exports: { default: async },
            with: {
                "qu:plugin/types": super::checker::qu::plugin::types,
                "qu:plugin/log": super::checker::qu::plugin::log,
                "qu:plugin/tcp.connection": crate::host::TcpConnection,
            },
        });
    }

    pub use checker::qu::plugin::types;
}
