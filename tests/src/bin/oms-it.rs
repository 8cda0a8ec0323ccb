//! The `oms` binary, built inside the test crate so tests can spawn it by `CARGO_BIN_EXE_oms-it` and kill it.
fn main() -> anyhow::Result<()> {
    oms_cli::main()
}
