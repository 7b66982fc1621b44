//! `mesh-certs`: writes a throwaway CA and a certificate per service for a local mesh.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Makes a throwaway CA and one certificate per service (and `operator`, a client certificate
/// for grpcurl and the tools), laid out as cert-manager mounts them:
/// `<out>/<name>/tls.crt`, `tls.key`, `ca.crt`. For a local mesh (`make run`) and tests; in a
/// cluster, cert-manager issues the certificates (deploy/kubernetes).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Folder to write into.
    #[arg(long, default_value = "data/tls")]
    out: PathBuf,
    /// Names to issue a certificate for (each also names the local hosts).
    #[arg(long = "name", value_name = "NAME", default_values_t = mesh_certs::MESH_NAMES.map(String::from))]
    names: Vec<String>,
    /// Make a new set even when every certificate is already there.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let present = args.names.iter().all(|name| {
        ["tls.crt", "tls.key", "ca.crt"]
            .iter()
            .all(|file| args.out.join(name).join(file).is_file())
    });
    if present && !args.force {
        println!(
            "certificates already in {} (--force makes a new set)",
            args.out.display()
        );
        return Ok(());
    }
    let names: Vec<&str> = args.names.iter().map(String::as_str).collect();
    let certs = mesh_certs::generate("mesh throwaway CA", &names, &mesh_certs::LOCAL_HOSTS)
        .context("cannot make the certificates")?;
    certs
        .write_to(&args.out)
        .with_context(|| format!("cannot write into {}", args.out.display()))?;
    println!(
        "wrote a new CA and certificates for {} into {}",
        names.join(", "),
        args.out.display()
    );
    Ok(())
}
