//! Turning C arguments into Rust values. Every check that can fail returns
//! a [`Failure`], which the boundary turns into a status and a message.
//!
//! The exports use these through one macro per kind of parameter (the
//! model is rustls-ffi's `try_ref_from_ptr!`): [`try_ref_from_ptr!`],
//! [`try_key!`], [`try_slice!`], [`try_slice_mut!`], [`try_str!`],
//! [`try_out!`] and [`try_opt_out!`]. Each takes the export's own
//! parameter (an identifier, which also names it in the message), checks
//! it and returns its [`Failure`] with `?`, so it can only be used inside
//! [`ffi_panic_boundary!`](super::boundary::ffi_panic_boundary).
//!
//! They hide an `unsafe` call: use them only on a parameter of an
//! `unsafe extern "C" fn rk_*` whose `# Safety` section promises what the
//! macro's documentation asks (in every export, that a pointer is NULL or
//! valid for what the function does with it, during the call).

use super::status::rk_status;
use crate::Error;
use std::ffi::{c_char, CStr, OsStr};
use std::fmt;
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::str::Utf8Error;

/// Why an `rk_` call failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A required pointer argument (named) was NULL.
    Null(&'static str),
    /// A pointer argument (named) is not aligned for its type.
    Misaligned(&'static str),
    /// `key` was NULL with this non-zero `key_len`.
    NullKey(usize),
    /// `items[index].key` was NULL with this non-zero `key_len`.
    NullItemKey { index: usize, len: usize },
    /// A length argument (named) exceeds `isize::MAX`.
    TooLong(&'static str, usize),
    /// A string argument (named) is not UTF-8.
    Utf8(&'static str, Utf8Error),
    /// Any other invalid argument.
    Invalid(String),
    /// No policy has this name.
    NoSuchPolicy(String),
    /// The caller's buffer holds `given` bytes; `needed` are needed.
    BufferTooSmall { needed: usize, given: usize },
    /// The operation needs a Redis-backed engine.
    WrongEngineKind,
    /// The engine refused.
    Engine(Error),
}

impl From<Error> for Failure {
    #[inline]
    fn from(e: Error) -> Self {
        Failure::Engine(e)
    }
}

impl Failure {
    pub(crate) fn status(&self) -> rk_status {
        match self {
            Failure::Null(_) => rk_status::RK_ERR_NULL_POINTER,
            Failure::NullKey(_) | Failure::NullItemKey { .. } => rk_status::RK_ERR_NULL_KEY,
            Failure::Utf8(..) => rk_status::RK_ERR_INVALID_UTF8,
            Failure::Misaligned(_) | Failure::TooLong(..) | Failure::Invalid(_) => {
                rk_status::RK_ERR_INVALID_ARGUMENT
            }
            Failure::BufferTooSmall { .. } => rk_status::RK_ERR_BUFFER_TOO_SMALL,
            Failure::NoSuchPolicy(_) => rk_status::RK_ERR_UNKNOWN_POLICY,
            Failure::WrongEngineKind => rk_status::RK_ERR_WRONG_ENGINE_KIND,
            Failure::Engine(e) => rk_status::of(e),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Null(name) => write!(f, "`{name}` is NULL"),
            Failure::Misaligned(name) => write!(f, "`{name}` is not aligned for its type"),
            Failure::NullKey(len) => write!(
                f,
                "`key` is NULL but `key_len` is {len} (pass key_len 0 for the empty key)"
            ),
            Failure::NullItemKey { index, len } => write!(
                f,
                "`items[{index}].key` is NULL but its `key_len` is {len} \
                 (pass key_len 0 for the empty key)"
            ),
            Failure::TooLong(name, len) => {
                write!(f, "`{name}` is {len}, larger than PTRDIFF_MAX")
            }
            Failure::Utf8(name, e) => write!(f, "`{name}` is not valid UTF-8: {e}"),
            Failure::Invalid(m) => write!(f, "invalid argument: {m}"),
            Failure::NoSuchPolicy(name) => write!(f, "no policy is named {name:?}"),
            Failure::BufferTooSmall { needed, given } => write!(
                f,
                "the buffer holds {given} bytes; {needed} are needed (including the NUL)"
            ),
            Failure::WrongEngineKind => write!(
                f,
                "the engine is not Redis-backed (open it with rk_engine_open_redis)"
            ),
            Failure::Engine(e) => write!(f, "{e}"),
        }
    }
}

/// Checks that a pointer the function will dereference is non-NULL and aligned.
#[inline(always)]
fn check<T>(p: *const T, name: &'static str) -> Result<(), Failure> {
    if p.is_null() {
        return Err(Failure::Null(name));
    }
    if !p.is_aligned() {
        return Err(Failure::Misaligned(name));
    }
    Ok(())
}

/// The key bytes `key[0..key_len]`. NULL with length 0 is the empty key.
///
/// # Safety
/// If `key_len > 0` and `key` is non-NULL, `key` points to `key_len`
/// readable bytes that stay unchanged for `'a`.
#[inline(always)]
pub(crate) unsafe fn key<'a>(key: *const u8, key_len: usize) -> Result<&'a [u8], Failure> {
    if key_len == 0 {
        return Ok(&[]);
    }
    if key.is_null() {
        return Err(Failure::NullKey(key_len));
    }
    if key_len > isize::MAX as usize {
        return Err(Failure::TooLong("key_len", key_len));
    }
    // SAFETY:
    // - `key` is non-NULL; `u8` needs no alignment;
    // - by the caller's contract it points to `key_len` readable bytes that
    //   are not written during `'a`;
    // - `key_len <= isize::MAX` (checked above), as `from_raw_parts` requires.
    Ok(unsafe { std::slice::from_raw_parts(key, key_len) })
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn utf8<'a>(p: *const c_char, name: &'static str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded from this function's contract.
    let bytes = unsafe { c_bytes(p, name)? };
    std::str::from_utf8(bytes).map_err(|e| Failure::Utf8(name, e))
}

/// A NUL-terminated path argument (any bytes but NUL, as on Unix).
///
/// # Safety
/// As for [`utf8`].
pub(crate) unsafe fn path<'a>(p: *const c_char, name: &'static str) -> Result<&'a Path, Failure> {
    // SAFETY: forwarded from this function's contract.
    let bytes = unsafe { c_bytes(p, name)? };
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// # Safety
/// As for [`utf8`].
unsafe fn c_bytes<'a>(p: *const c_char, name: &'static str) -> Result<&'a [u8], Failure> {
    if p.is_null() {
        return Err(Failure::Null(name));
    }
    // SAFETY:
    // - `p` is non-NULL; by the caller's contract it points to a
    //   NUL-terminated string that stays unchanged for `'a`.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// A required input struct.
///
/// # Safety
/// `p` is NULL or points to a readable, initialised `T` that stays
/// unchanged for `'a`.
#[inline(always)]
pub(crate) unsafe fn input<'a, T>(p: *const T, name: &'static str) -> Result<&'a T, Failure> {
    check(p, name)?;
    // SAFETY:
    // - non-NULL and aligned (checked above); readable, initialised and
    //   unchanged for `'a` by the caller's contract.
    Ok(unsafe { &*p })
}

/// A required input array `p[0..n]` of `T`. `n == 0` is the empty slice
/// whatever `p` is (the caller decides whether an empty array is an error).
/// `name` and `n_name` name `p` and `n` in messages.
///
/// # Safety
/// If `n > 0` and `p` is non-NULL, `p` points to `n` readable, initialised
/// `T`s that stay unchanged for `'a`.
#[inline(always)]
pub(crate) unsafe fn slice<'a, T>(
    p: *const T,
    n: usize,
    name: &'static str,
    n_name: &'static str,
) -> Result<&'a [T], Failure> {
    if n == 0 {
        return Ok(&[]);
    }
    check(p, name)?;
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Failure::TooLong(n_name, n));
    }
    // SAFETY:
    // - `p` is non-NULL and aligned (checked above);
    // - by the caller's contract it points to `n` readable, initialised `T`s
    //   that are not written during `'a`;
    // - `n * size_of::<T>() <= isize::MAX` (checked above).
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A caller's output array `p[0..n]` of `T` (initialised or not), checked
/// for NULL and alignment. `n == 0` is the empty slice whatever `p` is.
///
/// # Safety
/// If `n > 0` and `p` is non-NULL, `p` is valid for writing `n` `T`s for
/// `'a`, and nothing else accesses them meanwhile.
pub(crate) unsafe fn out_slice<'a, T>(
    p: *mut T,
    n: usize,
    name: &'static str,
    n_name: &'static str,
) -> Result<&'a mut [std::mem::MaybeUninit<T>], Failure> {
    if n == 0 {
        return Ok(&mut []);
    }
    check(p, name)?;
    if n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Failure::TooLong(n_name, n));
    }
    // SAFETY:
    // - `p` is non-NULL and aligned (checked above); `MaybeUninit<T>` has
    //   the layout of `T` and may hold anything, so the caller's memory,
    //   initialised or not, is valid for it;
    // - by the caller's contract it is valid for writing `n` `T`s and not
    //   accessed by anyone else during `'a`;
    // - `n * size_of::<T>() <= isize::MAX` (checked above).
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast(), n) })
}

/// An out-parameter: checked for NULL and alignment up front (before the
/// function does anything), written at most once, at the end, on success.
/// An optional one the caller did not pass (NULL) is never written.
pub(crate) struct Out<'a, T> {
    /// Aligned; NULL only for an optional out-parameter left out.
    ptr: *mut T,
    _lifetime: PhantomData<&'a mut T>,
}

impl<'a, T> Out<'a, T> {
    /// A required out-parameter.
    ///
    /// # Safety
    /// `p` is NULL or valid for writing a `T` (initialised or not) for `'a`
    /// (or, if the caller only ever uses [`write_prefix`](Self::write_prefix)
    /// with `bytes`, valid for writing that many bytes), and nothing else
    /// accesses it meanwhile.
    #[inline(always)]
    pub(crate) unsafe fn required(p: *mut T, name: &'static str) -> Result<Out<'a, T>, Failure> {
        check(p, name)?;
        Ok(Out {
            ptr: p,
            _lifetime: PhantomData,
        })
    }

    /// An optional out-parameter: NULL means the caller does not want it.
    ///
    /// # Safety
    /// As for [`required`](Self::required).
    #[inline(always)]
    pub(crate) unsafe fn optional(p: *mut T, name: &'static str) -> Result<Out<'a, T>, Failure> {
        if p.is_null() {
            return Ok(Out {
                ptr: p,
                _lifetime: PhantomData,
            });
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { Out::required(p, name) }
    }

    /// Writes the value (without reading or dropping the old one, which
    /// may be uninitialised); does nothing for an optional out-parameter
    /// left out.
    #[inline(always)]
    pub(crate) fn write(self, value: T) {
        if self.ptr.is_null() {
            return;
        }
        // SAFETY:
        // - `ptr` is non-NULL (checked just above), aligned and valid for
        //   writes for `'a`, and not accessed by anyone else meanwhile
        //   (checked or promised at `required`);
        // - `write` neither reads nor drops the old contents.
        unsafe { self.ptr.write(value) }
    }
}

impl<T: Copy> Out<'_, T> {
    /// Writes only the first `bytes` bytes of `value` (a versioned output
    /// struct whose caller knows only its first fields), leaving the rest
    /// of the caller's memory alone. `bytes` is capped at `size_of::<T>()`.
    /// Does nothing for an optional out-parameter left out.
    ///
    /// Only for `T`s without padding within the first `bytes` bytes (every
    /// byte copied is initialised).
    #[inline(always)]
    pub(crate) fn write_prefix(self, value: T, bytes: usize) {
        if self.ptr.is_null() {
            return;
        }
        let bytes = bytes.min(std::mem::size_of::<T>());
        // SAFETY:
        // - the source is a local `T`, whose first `bytes` bytes are
        //   initialised (no padding there: this method's contract);
        // - `ptr` is non-NULL (checked just above), aligned and valid for
        //   writing at least `bytes` bytes (checked or promised at
        //   `required`), and does not overlap the local.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&value as *const T).cast::<u8>(),
                self.ptr.cast::<u8>(),
                bytes,
            )
        }
    }
}

/// Checks the `out_size` argument of a function that writes a versioned
/// output struct `type_name` (at least `min` bytes, the first version's size).
pub(crate) fn out_size(out_size: usize, min: usize, type_name: &str) -> Result<(), Failure> {
    if out_size < min {
        return Err(Failure::Invalid(format!(
            "out_size is {out_size}; it must be at least {min} (pass sizeof({type_name}))"
        )));
    }
    Ok(())
}

/// Copies `s` plus a NUL into the caller's buffer (`buf[0..buf_len]`) and
/// stores its length (without the NUL) in `len_out`. `buf == NULL` with
/// `buf_len == 0` only asks for the length (then `len_out` is required).
///
/// # Safety
/// `buf` is NULL or valid for writing `buf_len` bytes; `len_out` is NULL or
/// valid for writing a `size_t`; neither overlaps `s`.
pub(crate) unsafe fn copy_str_out(
    s: &str,
    buf: *mut c_char,
    buf_len: usize,
    len_out: *mut usize,
) -> Result<(), Failure> {
    let needed = s.len() + 1;
    if buf.is_null() {
        if buf_len != 0 {
            return Err(Failure::Null("buf"));
        }
        // SAFETY: forwarded from this function's contract.
        let len_out = unsafe { Out::required(len_out, "len_out (required when buf is NULL)")? };
        len_out.write(s.len());
        return Ok(());
    }
    if buf_len > isize::MAX as usize {
        return Err(Failure::TooLong("buf_len", buf_len));
    }
    // SAFETY: forwarded from this function's contract.
    let len_out = unsafe { Out::optional(len_out, "len_out")? };
    if buf_len < needed {
        return Err(Failure::BufferTooSmall {
            needed,
            given: buf_len,
        });
    }
    // SAFETY:
    // - `buf` is non-NULL and valid for `buf_len >= needed` bytes of writes
    //   (caller's contract, length checked above); `u8` needs no alignment;
    // - the caller's buffer does not overlap `s`, which the engine owns.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
    }
    len_out.write(s.len());
    Ok(())
}

/// The `struct_size` (first field, a `u32`) of a caller's versioned options
/// struct, checked to be at least `min` bytes.
///
/// # Safety
/// `p` is non-NULL, aligned, and points to at least 4 readable,
/// initialised bytes (the `struct_size` field).
pub(crate) unsafe fn struct_size<T>(
    p: *const T,
    min: usize,
    name: &'static str,
) -> Result<usize, Failure> {
    // SAFETY:
    // - `p` is non-NULL and aligned for `T`, hence for its leading `u32`;
    //   the caller's contract makes those 4 bytes readable and initialised.
    let size = unsafe { p.cast::<u32>().read() } as usize;
    if size < min {
        return Err(Failure::Invalid(format!(
            "{name}->struct_size is {size}; it must be at least {min} \
             (initialise the struct with its _init function first)"
        )));
    }
    Ok(size)
}

/// Reads field `$field` (of type `$ty`) of the versioned struct `*$p` (of
/// type `$T`) if it lies entirely within the caller's `$size` bytes; `None`
/// otherwise.
///
/// Only for use where `$p` is non-NULL, aligned and its first `$size`
/// bytes are readable and initialised (the callers' safety contracts).
macro_rules! versioned_field {
    ($p:expr, $size:expr, $T:ty, $field:ident: $ty:ty) => {{
        let p: *const $T = $p;
        if ::std::mem::offset_of!($T, $field) + ::std::mem::size_of::<$ty>() <= $size {
            // SAFETY:
            // - the field lies within the caller's `$size` bytes (checked
            //   just above), which are readable, aligned and initialised by
            //   the surrounding function's contract;
            // - the annotation below makes `$ty` the field's own type.
            let v: $ty = unsafe { ::std::ptr::addr_of!((*p).$field).read() };
            Some(v)
        } else {
            None
        }
    }};
}
pub(crate) use versioned_field;

/// Reads the `bool` field `$field` of the versioned struct `*$p` (of type
/// `$T`, named `$name` in messages) if it lies within the caller's `$size`
/// bytes: `Ok(None)` if it does not, an invalid-argument failure if the
/// byte there is neither 0 nor 1 (a C caller can store any byte in a
/// `bool`, e.g. with `memset`; Rust must never see it as a `bool`).
///
/// Only for use where `$p` is non-NULL, aligned and its first `$size`
/// bytes are readable and initialised (the callers' safety contracts).
macro_rules! versioned_bool {
    ($p:expr, $size:expr, $T:ty, $name:literal, $field:ident) => {{
        let p: *const $T = $p;
        // The field must be a `bool` (one byte).
        let _: fn(&$T) -> &bool = |s| &s.$field;
        // The one-byte field lies within the caller's bytes.
        if ::std::mem::offset_of!($T, $field) < $size {
            // SAFETY:
            // - the field lies within the caller's `$size` bytes (checked
            //   just above), which are readable and initialised by the
            //   surrounding function's contract;
            // - it is read as a `u8` (same size, alignment 1), which any
            //   byte is.
            let byte: u8 = unsafe { ::std::ptr::addr_of!((*p).$field).cast::<u8>().read() };
            match byte {
                0 => Ok(Some(false)),
                1 => Ok(Some(true)),
                other => Err($crate::ffi::Failure::Invalid(format!(
                    "{}->{} is {other}; expected false (0) or true (1)",
                    $name,
                    stringify!($field)
                ))),
            }
        } else {
            Ok(None)
        }
    }};
}
pub(crate) use versioned_bool;

// The argument macros. Each evaluates its parameter outside the `unsafe`
// block, and returns its `Failure` with `?` (see the module documentation).

/// `&T` from the pointer parameter `$p`: NULL is `RK_ERR_NULL_POINTER`, a
/// misaligned pointer `RK_ERR_INVALID_ARGUMENT`; the message names `$p`.
///
/// The enclosing export's contract must make `$p` NULL or point to an
/// initialised `T` valid for shared access (`&T`) during the call.
macro_rules! try_ref_from_ptr {
    ($p:ident) => {{
        let p = $p;
        // SAFETY: by the enclosing export's contract, `p` is NULL or points
        // to an initialised value valid for shared access during the call;
        // `input` checks NULL and alignment.
        unsafe { $crate::ffi::args::input(p, stringify!($p)) }?
    }};
}
pub(crate) use try_ref_from_ptr;

/// The key bytes `$key[0..$key_len]` (NULL with length 0 is the empty
/// key; NULL with another length is `RK_ERR_NULL_KEY`).
///
/// The enclosing export's contract must make `$key` NULL or point to
/// `$key_len` readable bytes that stay unchanged during the call.
macro_rules! try_key {
    ($key:ident, $key_len:ident) => {{
        let (key, key_len) = ($key, $key_len);
        // SAFETY: by the enclosing export's contract, `key` is NULL or
        // points to `key_len` readable bytes unchanged during the call.
        unsafe { $crate::ffi::args::key(key, key_len) }?
    }};
}
pub(crate) use try_key;

/// The input array `$p[0..$n]` as `&[T]`: empty if `$n` is 0 (whatever
/// `$p`); else NULL is `RK_ERR_NULL_POINTER`, and a misaligned `$p` or a
/// `$n` too large for the address space `RK_ERR_INVALID_ARGUMENT`.
///
/// The enclosing export's contract must make `$p` NULL or point to `$n`
/// initialised `T`s that stay unchanged during the call.
macro_rules! try_slice {
    ($p:ident, $n:ident) => {{
        let (p, n) = ($p, $n);
        // SAFETY: by the enclosing export's contract, `p` is NULL or points
        // to `n` initialised values unchanged during the call; `slice`
        // checks NULL, alignment and size.
        unsafe { $crate::ffi::args::slice(p, n, stringify!($p), stringify!($n)) }?
    }};
}
pub(crate) use try_slice;

/// The caller's output array `$p[0..$n]` as `&mut [MaybeUninit<T>]`,
/// checked as [`try_slice!`] checks its input.
///
/// The enclosing export's contract must make `$p` NULL or valid for
/// writing `$n` `T`s that nothing else accesses during the call.
macro_rules! try_slice_mut {
    ($p:ident, $n:ident) => {{
        let (p, n) = ($p, $n);
        // SAFETY: by the enclosing export's contract, `p` is NULL or valid
        // for writing `n` values that nothing else accesses during the
        // call; `out_slice` checks NULL, alignment and size.
        unsafe { $crate::ffi::args::out_slice(p, n, stringify!($p), stringify!($n)) }?
    }};
}
pub(crate) use try_slice_mut;

/// The NUL-terminated UTF-8 string parameter `$p` as `&str`: NULL is
/// `RK_ERR_NULL_POINTER`, other bytes than UTF-8 `RK_ERR_INVALID_UTF8`.
///
/// The enclosing export's contract must make `$p` NULL or a NUL-terminated
/// string that stays unchanged during the call.
macro_rules! try_str {
    ($p:ident) => {{
        let p = $p;
        // SAFETY: by the enclosing export's contract, `p` is NULL or a
        // NUL-terminated string unchanged during the call.
        unsafe { $crate::ffi::args::utf8(p, stringify!($p)) }?
    }};
}
pub(crate) use try_str;

/// The required out-parameter `$p` as an [`Out`], checked at once (NULL is
/// `RK_ERR_NULL_POINTER`, misaligned `RK_ERR_INVALID_ARGUMENT`) and
/// written with [`Out::write`] as the last step, so only on success.
///
/// The enclosing export's contract must make `$p` NULL or valid for
/// writing a `T` (or, for a versioned struct written with
/// [`Out::write_prefix`], that many bytes) that nothing else accesses
/// during the call.
macro_rules! try_out {
    ($p:ident) => {{
        let p = $p;
        // SAFETY: by the enclosing export's contract, `p` is NULL or valid
        // for the writes the export makes, and nothing else accesses it
        // during the call; `required` checks NULL and alignment.
        unsafe { $crate::ffi::args::Out::required(p, stringify!($p)) }?
    }};
}
pub(crate) use try_out;

/// The optional out-parameter `$p` (NULL: the caller does not want it) as
/// an [`Out`] that [`Out::write`] leaves alone if NULL; otherwise as
/// [`try_out!`], with the same contract.
macro_rules! try_opt_out {
    ($p:ident) => {{
        let p = $p;
        // SAFETY: by the enclosing export's contract, `p` is NULL or valid
        // for the writes the export makes, and nothing else accesses it
        // during the call; `optional` checks alignment.
        unsafe { $crate::ffi::args::Out::optional(p, stringify!($p)) }?
    }};
}
pub(crate) use try_opt_out;
