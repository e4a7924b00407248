//! Where a policy's words live: a zeroed heap allocation, or (for shared
//! engines) a range of a file mapping that outlives the table.

use crate::sync::Atomic128;
use crate::Error;

/// Alignment of heap regions: a policy's counters are 128-byte lines.
const HEAP_ALIGN: usize = 128;

/// A region of `len` zero-initialised (or previously used) units.
pub(crate) enum Memory {
    /// Owned heap memory, 128-byte aligned, freed on drop.
    #[cfg(not(loom))]
    Heap { ptr: *mut Atomic128, len: usize },
    /// Loom atomics cannot be zero-initialised: built one by one.
    #[cfg(loom)]
    Heap(Box<[Atomic128]>),
    /// Part of a shared mapping kept alive by `owner`.
    Mapped {
        ptr: *const Atomic128,
        len: usize,
        _owner: std::sync::Arc<crate::shm::Mapping>,
    },
}

// SAFETY:
// - `Heap` owns its allocation, which holds only atomics;
// - `Mapped` points into a mapping owned by `owner` (kept alive as long as
//   this value), and the units are atomics only.
unsafe impl Send for Memory {}
// SAFETY: as for `Send`: shared access only ever goes through atomic operations.
unsafe impl Sync for Memory {}

#[cfg(not(loom))]
fn heap_layout(len: usize) -> Result<std::alloc::Layout, Error> {
    len.checked_mul(std::mem::size_of::<Atomic128>())
        .and_then(|bytes| {
            std::alloc::Layout::from_size_align(bytes.max(HEAP_ALIGN), HEAP_ALIGN).ok()
        })
        .ok_or_else(|| Error::OutOfMemory(format!("{len} table words")))
}

impl Memory {
    /// `len` zeroed units on the heap, allocated once.
    pub fn heap(len: usize) -> Result<Memory, Error> {
        #[cfg(not(loom))]
        {
            let layout = heap_layout(len)?;
            // SAFETY:
            // - `layout` has non-zero size (at least HEAP_ALIGN bytes);
            // - all-zero bytes are a valid `Atomic128` (on x86_64 an
            //   `UnsafeCell<u128>`, elsewhere portable-atomic's `AtomicU128`,
            //   also a plain 16-byte integer), so the zeroed allocation holds
            //   `len` initialised values.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Atomic128;
            if ptr.is_null() {
                return Err(Error::OutOfMemory(format!(
                    "{} bytes for a table",
                    layout.size()
                )));
            }
            Ok(Memory::Heap { ptr, len })
        }
        #[cfg(loom)]
        {
            let _ = HEAP_ALIGN;
            Ok(Memory::Heap((0..len).map(|_| Atomic128::new(0)).collect()))
        }
    }

    #[inline(always)]
    pub fn units(&self) -> &[Atomic128] {
        match self {
            #[cfg(not(loom))]
            // SAFETY: `ptr` is a live allocation of `len` initialised units,
            // owned by `self` and freed only on drop.
            Memory::Heap { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
            #[cfg(loom)]
            Memory::Heap(b) => b,
            // SAFETY:
            // - `ptr..ptr+len` lies inside the mapping owned by `owner`, which
            //   this value keeps alive; regions are 4096-byte aligned and
            //   shared units are only accessed atomically.
            Memory::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

#[cfg(not(loom))]
impl Drop for Memory {
    fn drop(&mut self) {
        if let Memory::Heap { ptr, len } = *self {
            let layout = heap_layout(len).expect("the layout was valid at allocation");
            // SAFETY: `ptr` came from `alloc_zeroed` with exactly this layout
            // and is freed once, here.
            unsafe { std::alloc::dealloc(ptr.cast(), layout) }
        }
    }
}
