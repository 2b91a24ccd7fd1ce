use std::process::ExitCode;

fn main() -> ExitCode {
    feishu_gate::main()
}
