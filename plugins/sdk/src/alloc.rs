//! The plugin's allocator: the C library's, behind a cache of small
//! blocks.
//!
//! Every string and list of a call's input is copied into the plugin's
//! memory in a block of its own (through `cabi_realloc`, below), lifted into
//! Rust values that allocate again, and freed when the call returns: about
//! ten small allocations and frees per router call. wasi-libc's dlmalloc
//! spent 15% of such a call on them. Here a block of up to
//! `SMALL_BYTES` goes, when freed, onto a free list per 16-byte size class,
//! and the next allocation of that class takes it back: a pointer pop, as
//! in glibc's tcache. Larger blocks go to the C library as before.
//!
//! Small blocks are never handed back to the C library, so the cache holds
//! as much as the plugin ever had of them at once; the plugin's memory
//! limit still bounds it.
//!
//! Wasm plugins run on one thread, so plain `Cell`s suffice.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr;

const CLASS_BYTES: usize = 16;
const CLASSES: usize = 16;
/// Blocks up to this size are cached.
const SMALL_BYTES: usize = CLASS_BYTES * CLASSES;
/// Every cached block has this alignment, so it can serve any request of
/// its class.
const SMALL_ALIGN: usize = 16;

pub struct Allocator {
    /// Heads of the free lists; a free block holds the next one's address.
    free: [Cell<*mut u8>; CLASSES],
}

// SAFETY: a Wasm plugin instance runs on one thread (wasm32-wasip2 has no
// threads); nothing here is ever touched from two threads.
unsafe impl Sync for Allocator {}

/// The size class of `layout`, if its blocks are cached.
fn class(layout: Layout) -> Option<usize> {
    (layout.size() > 0 && layout.size() <= SMALL_BYTES && layout.align() <= SMALL_ALIGN)
        .then(|| (layout.size() - 1) / CLASS_BYTES)
}

fn class_layout(class: usize) -> Layout {
    // SAFETY: a non-zero multiple of a power of two, far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked((class + 1) * CLASS_BYTES, SMALL_ALIGN) }
}

unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            // SAFETY: forwarded as is.
            return unsafe { System.alloc(layout) };
        };
        let head = self.free[c].get();
        if head.is_null() {
            // SAFETY: a valid, non-zero layout.
            return unsafe { System.alloc(class_layout(c)) };
        }
        // SAFETY: a free block of this class holds the next one's address
        // in its first bytes (blocks are 16-byte aligned and at least 16
        // bytes long).
        self.free[c].set(unsafe { head.cast::<*mut u8>().read() });
        head
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            // SAFETY: a block this size came from the system allocator.
            return unsafe { System.dealloc(ptr, layout) };
        };
        // SAFETY: the block is ours again and at least 16 bytes long.
        unsafe { ptr.cast::<*mut u8>().write(self.free[c].get()) };
        self.free[c].set(ptr);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a valid new size for this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            (Some(a), Some(b)) if a == b => ptr,
            // SAFETY: both sizes belong to the system allocator.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: a fresh block for the new layout; the copy stays
                // within both blocks; the old block is freed by its layout.
                unsafe {
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator {
    free: [const { Cell::new(ptr::null_mut()) }; CLASSES],
};

/// The canonical ABI's allocator export, through which the host places a
/// call's input (and what imports return) in the plugin's memory. It
/// replaces wasi-libc's, which calls `malloc` directly: every block the
/// generated glue frees through Rust's allocator must come from it.
///
/// # Safety
/// Called by the host under the canonical ABI's contract: `old_ptr` and
/// `old_len` name a block this function returned with alignment `align`,
/// or are 0.
#[no_mangle]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        if old_len != 0 {
            // SAFETY: the block came from here with this size and alignment.
            unsafe {
                ALLOCATOR.dealloc(old_ptr, Layout::from_size_align_unchecked(old_len, align))
            };
        }
        // Nothing to hold: a dangling, aligned pointer, never freed.
        return align as *mut u8;
    }
    // SAFETY: the canonical ABI passes a power-of-two alignment and sizes
    // that fit the 32-bit address space.
    let ptr = unsafe {
        if old_len == 0 {
            ALLOCATOR.alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            ALLOCATOR.realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        // Out of memory: trap, as wasi-libc's version does.
        std::process::abort();
    }
    ptr
}
