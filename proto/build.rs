//! Compiles the .proto files with protox (pure Rust), so no `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "anygate/v1/inventory.proto",
        "anygate/v1/cluster.proto",
        "anygate/raft/v1/raft.proto",
        "gobgp/gobgp.proto",
        "gobgp/attribute.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // Every anygate gRPC method, "package.Service/Method": the only values a
    // metric label may take from a request path (anything else is
    // "unknown", so a caller cannot mint label values).
    let mut methods = Vec::new();
    for f in &fds.file {
        let pkg = f.package();
        if !pkg.starts_with("anygate.") {
            continue;
        }
        for svc in &f.service {
            for m in &svc.method {
                methods.push(format!("{pkg}.{}/{}", svc.name(), m.name()));
            }
        }
    }
    methods.sort();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("methods.rs");
    std::fs::write(out, format!("pub const METHODS: &[&str] = &{methods:?};\n"))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Operator messages are also what anygatectl prints with --json and
        // reads in `peer import`.
        .message_attribute(
            ".anygate.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .enum_attribute(
            ".anygate.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        // Enums print by name in JSON ("announced", "drained"), not as numbers.
        .field_attribute(
            ".anygate.v1.BgpStatus.state",
            "#[serde(with = \"crate::enum_names::bgp_state\")]",
        )
        .field_attribute(
            ".anygate.v1.BgpStatus.withdraw_reason",
            "#[serde(with = \"crate::enum_names::withdraw_reason\")]",
        )
        .field_attribute(
            ".anygate.v1.DataplaneStatus.backend",
            "#[serde(with = \"crate::enum_names::dataplane_backend\")]",
        )
        .field_attribute(
            ".anygate.v1.Peer.state",
            "#[serde(with = \"crate::enum_names::peer_state\")]",
        )
        .field_attribute(
            ".anygate.v1.PeerSpec.state",
            "#[serde(with = \"crate::enum_names::peer_state\")]",
        )
        .field_attribute(
            ".anygate.v1.IdpMapping.role",
            "#[serde(with = \"crate::enum_names::console_role\")]",
        )
        .compile_fds(fds)?;
    Ok(())
}
