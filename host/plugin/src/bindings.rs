//! Host bindings of the `qu:plugin@0.1.0` worlds. A later contract version
//! gets its own pair of modules beside these.

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
