//! Loads the kernel modules the initrd builder listed in `/lib/modules/sluice.order`.

use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use tracing::{debug, warn};

/// The load-order file (one path per line, relative to `/lib/modules/`).
pub const ORDER_FILE: &str = "/lib/modules/sluice.order";

/// Loads every listed module in order. Already loaded (EEXIST) is fine; other failures are
/// logged and skipped, since a driver may also be built in. Returns how many were loaded.
pub fn load_listed(order_file: &Path) -> usize {
    let Ok(list) = std::fs::read_to_string(order_file) else {
        debug!("no {} in the initrd: nothing to load", order_file.display());
        return 0;
    };
    let base = order_file.parent().unwrap_or(Path::new("/"));
    let mut loaded = 0;
    for rel in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = base.join(rel);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                warn!("module {}: {e}", path.display());
                continue;
            }
        };
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) => {
                debug!("loaded {rel}");
                loaded += 1;
            }
            Err(Errno::EEXIST) => debug!("{rel} already loaded"),
            Err(e) => warn!("loading module {rel}: {e}"),
        }
    }
    loaded
}
