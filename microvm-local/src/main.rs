//! microvm-local: `aws lambda-microvms run-microvm`, played locally. See the
//! library's documentation (`microvm_local`) for what it does.

fn main() {
    std::process::exit(microvm_local::run::main(std::env::args_os()));
}
