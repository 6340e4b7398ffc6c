//! Builds initramfs images.
