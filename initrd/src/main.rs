//! `sluice-initrd`: command-line front end of the initrd builder.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use initrd::InitrdBuilder;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-initrd",
    about = "Build a Sluice initramfs holding the guest agent"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a gzip newc cpio (or a segment appended to an existing initrd).
    Build {
        /// The static guest-agent binary; becomes /init.
        #[arg(long)]
        agent: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Extracted kernel package's lib/modules/<version> directory.
        #[arg(long, requires = "module")]
        modules_dir: Option<PathBuf>,
        /// Kernel module to include with its dependencies (repeatable).
        #[arg(long = "module")]
        module: Vec<String>,
        /// Kernel module to include if it exists as a .ko (repeatable).
        #[arg(long = "optional-module")]
        optional_module: Vec<String>,
        /// Extra file: SRC:DEST[:MODE] (octal mode, default 0644; repeatable).
        #[arg(long = "file")]
        file: Vec<String>,
        /// Existing initrd to append this archive to as a second segment.
        #[arg(long)]
        append_to: Option<PathBuf>,
    },
}

fn parse_file_spec(spec: &str) -> Result<(PathBuf, String, u32)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dest, mode) = match parts.as_slice() {
        [src, dest] => (*src, *dest, 0o644),
        [src, dest, mode] => (
            *src,
            *dest,
            u32::from_str_radix(mode, 8)
                .with_context(|| format!("--file {spec}: mode `{mode}` is not octal"))?,
        ),
        _ => bail!("--file {spec}: expected SRC:DEST[:MODE]"),
    };
    Ok((PathBuf::from(src), dest.to_string(), mode))
}

fn main() -> Result<()> {
    let Cli { cmd } = Cli::parse();
    let Cmd::Build {
        agent,
        out,
        modules_dir,
        module,
        optional_module,
        file,
        append_to,
    } = cmd;
    let mut b = InitrdBuilder::new(agent);
    if let Some(dir) = &modules_dir {
        let names: Vec<&str> = module.iter().map(String::as_str).collect();
        b = b.kernel_modules(dir, &names);
        if !optional_module.is_empty() {
            let names: Vec<&str> = optional_module.iter().map(String::as_str).collect();
            b = b.optional_kernel_modules(dir, &names);
        }
    } else if !optional_module.is_empty() {
        bail!("--optional-module needs --modules-dir");
    }
    for spec in &file {
        let (src, dest, mode) = parse_file_spec(spec)?;
        b = b.file(src, &dest, mode);
    }
    let bytes = match &append_to {
        Some(existing) => {
            let base = std::fs::read(existing)
                .with_context(|| format!("reading --append-to {}", existing.display()))?;
            b.append_to(&base)?
        }
        None => b.build()?,
    };
    std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "sluice-initrd: wrote {} ({} bytes)",
        out.display(),
        bytes.len()
    );
    Ok(())
}
