//! An ingress target: see common/echo.rs. `ECHO_PORTS=8080,8081` (default 8080).

#[path = "common/echo.rs"]
mod echo;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut ports = echo::ports("ECHO_PORTS");
    if ports.is_empty() {
        ports.push(8080);
    }
    let mut tasks = Vec::new();
    for p in ports {
        tasks.push(tokio::spawn(echo::serve(p)));
        println!("echo: listening on {p}");
    }
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            eprintln!("echo: {e}");
            std::process::exit(1);
        }
    }
}
