//! Helpers shared by the initrd test binaries.

use initrd::read_initrd;

/// The module load order an image carries (`lib/modules/sluice.order`), as bare module
/// names (no directory, no `.ko`).
pub fn module_order(image: &[u8]) -> Vec<String> {
    let entries = read_initrd(image).unwrap();
    let order = entries
        .iter()
        .find(|e| e.name == "lib/modules/sluice.order")
        .expect("order file");
    String::from_utf8(order.data.clone())
        .unwrap()
        .lines()
        .map(|l| {
            l.rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".ko")
                .to_string()
        })
        .collect()
}
