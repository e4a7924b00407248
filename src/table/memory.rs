//! Where a policy's words live: a zeroed heap allocation, or (for shared
//! engines) a range of a file mapping that outlives the table.

use crate::sync::Atomic128;
use crate::Error;

/// Alignment of heap regions: a policy's counters are 128-byte lines.
const HEAP_ALIGN: usize = 128;

/// A region of `len` zero-initialised (or previously used) units.
pub(crate) enum Memory {
    /// Owned zeroed memory, 128-byte aligned, freed on drop: from the
    /// allocator, or (`mapped`: the mapping's start and length, for large
    /// tables on Linux) an anonymous mapping that asks for huge pages.
    #[cfg(not(loom))]
    Heap {
        ptr: *mut Atomic128,
        len: usize,
        mapped: Option<(usize, usize)>,
    },
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

/// A huge page (x86_64 and aarch64 with 4 KiB base pages).
#[cfg(all(not(loom), target_os = "linux"))]
const HUGE_PAGE: usize = 2 << 20;

/// `bytes` zeroed bytes of a private anonymous mapping, aligned to a huge
/// page and advised to use huge pages (Linux transparent huge pages, where
/// enabled for `madvise`), before any page is touched. A large table is
/// read at random: with 4 KiB pages nearly every check of a table far
/// larger than the TLB's reach also walks the page tables. Returns the
/// aligned start and the whole mapping (to unmap), or `None` if `mmap`
/// fails (the caller then takes the allocator's memory).
#[cfg(all(not(loom), target_os = "linux"))]
fn huge_mapping(bytes: usize) -> Option<(*mut Atomic128, (usize, usize))> {
    let map_len = bytes.checked_add(HUGE_PAGE)?;
    // SAFETY:
    // - an anonymous private mapping at an address of the kernel's choice
    //   aliases nothing; its pages read as zero until written.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let start = (base as usize).next_multiple_of(HUGE_PAGE);
    // SAFETY:
    // - `start..start + bytes` lies inside the mapping just made (at most
    //   HUGE_PAGE - 1 bytes past `base`) and is page-aligned;
    // - MADV_HUGEPAGE changes how the kernel backs those pages, never their
    //   contents; an error (THP disabled) is ignored: it is a hint.
    unsafe {
        libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
    }
    Some((start as *mut Atomic128, (base as usize, map_len)))
}

impl Memory {
    /// `len` zeroed units on the heap, allocated once.
    pub fn heap(len: usize) -> Result<Memory, Error> {
        #[cfg(not(loom))]
        {
            let layout = heap_layout(len)?;
            #[cfg(target_os = "linux")]
            if layout.size() >= HUGE_PAGE {
                if let Some((ptr, mapped)) = huge_mapping(layout.size()) {
                    return Ok(Memory::Heap {
                        ptr,
                        len,
                        mapped: Some(mapped),
                    });
                }
            }
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
            Ok(Memory::Heap {
                ptr,
                len,
                mapped: None,
            })
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
            Memory::Heap { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
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
        if let Memory::Heap {
            mapped: Some((base, map_len)),
            ..
        } = *self
        {
            // SAFETY: `base..base + map_len` is the mapping made by
            // `huge_mapping`, owned by `self` and unmapped once, here.
            unsafe { libc::munmap(base as *mut libc::c_void, map_len) };
            return;
        }
        if let Memory::Heap { ptr, len, .. } = *self {
            let layout = heap_layout(len).expect("the layout was valid at allocation");
            // SAFETY: `ptr` came from `alloc_zeroed` with exactly this layout
            // and is freed once, here.
            unsafe { std::alloc::dealloc(ptr.cast(), layout) }
        }
    }
}

#[cfg(all(test, not(loom), target_os = "linux"))]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping of this process that holds `addr`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_once(' ').and_then(|(r, _)| r.split_once('-'));
            if let Some((a, b)) = range {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[test]
    fn a_large_table_is_zeroed_huge_page_aligned_and_advised() {
        let len = HUGE_PAGE / 16 * 3 + 5;
        let mem = Memory::heap(len).unwrap();
        assert!(matches!(
            mem,
            Memory::Heap {
                mapped: Some(_),
                ..
            }
        ));
        let units = mem.units();
        assert_eq!(units.len(), len);
        let addr = units.as_ptr() as usize;
        assert_eq!(addr % HUGE_PAGE, 0);
        // One word per 4 KiB page, and the last: all zero, all writable.
        for u in units.iter().step_by(4096 / 16).chain(units.last()) {
            assert_eq!(u.load(), 0);
            assert_eq!(u.compare_exchange(0, 7), Ok(0));
        }
        let flags = vm_flags(addr).expect("the table is mapped");
        if std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            // `hg`: MADV_HUGEPAGE was applied to the mapping.
            assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        }
    }

    #[test]
    fn a_small_table_comes_from_the_allocator() {
        let mem = Memory::heap(1000).unwrap();
        assert!(matches!(mem, Memory::Heap { mapped: None, .. }));
        assert_eq!(mem.units().as_ptr() as usize % HEAP_ALIGN, 0);
        assert!(mem.units().iter().all(|u| u.load() == 0));
    }
}
