//! The `oms` binary; everything lives in the `oms_cli` library so the integration tests run the same code.
fn main() -> anyhow::Result<()> {
    oms_cli::main()
}
