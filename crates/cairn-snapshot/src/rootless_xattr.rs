//! The `user.rootlesscontainers` extended attribute: where a rootless unpack records the owner a
//! file *should* have had when it could not `chown(2)` it.
//!
//! The value is a protobuf message from <https://github.com/rootless-containers/proto>:
//!
//! ```text
//! syntax = "proto3";
//! message Resource { uint32 uid = 1; uint32 gid = 2; }
//! ```
//!
//! umoci (`oci/layer/utils.go`, `unmapHeader`) writes it the way this module does: an id that is
//! 0 is stored as [`NOOP_ID`] (`0xFFFF_FFFF`, "leave unchanged", as `chown(2)` reads `-1`), and
//! when both ids are 0 no attribute is written at all, since "owned by the caller" already means
//! root. Protobuf 3 leaves a field out when it is 0, so the encoding below does too; a reader must
//! treat a missing field as a literal 0 (the spec says zero is zero, not "unset").
//!
//! The message is two varints; pulling in a protobuf crate for that would be more code to trust,
//! not less.

/// The attribute name.
pub(crate) const XATTR_NAME: &str = "user.rootlesscontainers";

/// "Keep this id unchanged": `(uint32_t) -1`.
pub(crate) const NOOP_ID: u32 = u32::MAX;

/// One decoded `Resource` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resource {
    /// The emulated owner, or [`NOOP_ID`].
    pub uid: u32,
    /// The emulated group, or [`NOOP_ID`].
    pub gid: u32,
}

impl Resource {
    /// The record for a file that should be owned by `uid:gid` but belongs to the caller, or
    /// `None` when there is nothing to record (`0:0`, which is what the caller stands for).
    pub(crate) fn for_owner(uid: u32, gid: u32) -> Option<Resource> {
        let noop_if_root = |id: u32| if id == 0 { NOOP_ID } else { id };
        let resource = Resource {
            uid: noop_if_root(uid),
            gid: noop_if_root(gid),
        };
        (resource.uid != NOOP_ID || resource.gid != NOOP_ID).then_some(resource)
    }

    /// The protobuf wire form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        for (field, value) in [(1u8, self.uid), (2u8, self.gid)] {
            if value != 0 {
                // Key: field number << 3 | wire type 0 (varint).
                out.push(field << 3);
                put_varint(&mut out, u64::from(value));
            }
        }
        out
    }

    /// Parses the protobuf wire form. Unknown fields are skipped, as protobuf readers must.
    // The applier only writes this attribute; the layer differ (which turns it back into tar
    // owners, as umoci's `mapHeader` does) is the reader.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn decode(mut bytes: &[u8]) -> Option<Resource> {
        let mut resource = Resource { uid: 0, gid: 0 };
        while !bytes.is_empty() {
            let key = take_varint(&mut bytes)?;
            match (key >> 3, key & 7) {
                (1, 0) => resource.uid = u32::try_from(take_varint(&mut bytes)?).ok()?,
                (2, 0) => resource.gid = u32::try_from(take_varint(&mut bytes)?).ok()?,
                (_, 0) => {
                    take_varint(&mut bytes)?;
                }
                (_, 1) => bytes = bytes.get(8..)?,
                (_, 5) => bytes = bytes.get(4..)?,
                (_, 2) => {
                    let len = usize::try_from(take_varint(&mut bytes)?).ok()?;
                    bytes = bytes.get(len..)?;
                }
                _ => return None,
            }
        }
        Some(resource)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg_attr(not(test), allow(dead_code))]
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_owned_files_get_no_record() {
        assert_eq!(Resource::for_owner(0, 0), None);
    }

    #[test]
    fn zero_ids_become_noop_and_encode_like_go_protobuf() {
        // What Go's proto.Marshal produces for Resource{Uid: 1000, Gid: NoopID}.
        let r = Resource::for_owner(1000, 0).unwrap();
        assert_eq!(
            r,
            Resource {
                uid: 1000,
                gid: NOOP_ID
            }
        );
        assert_eq!(
            r.encode(),
            [0x08, 0xe8, 0x07, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]
        );

        let r = Resource::for_owner(0, 5).unwrap();
        assert_eq!(r.encode(), [0x08, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x10, 0x05]);

        let r = Resource::for_owner(65534, 65534).unwrap();
        assert_eq!(r.encode(), [0x08, 0xfe, 0xff, 0x03, 0x10, 0xfe, 0xff, 0x03]);
    }

    #[test]
    fn proto3_leaves_zero_fields_out() {
        assert_eq!(Resource { uid: 0, gid: 7 }.encode(), [0x10, 0x07]);
        assert_eq!(Resource { uid: 0, gid: 0 }.encode(), Vec::<u8>::new());
    }

    #[test]
    fn decodes_what_it_encodes_and_skips_unknown_fields() {
        for (uid, gid) in [(1, 2), (1000, NOOP_ID), (NOOP_ID, 1), (0, 9), (300, 0)] {
            let r = Resource { uid, gid };
            assert_eq!(Resource::decode(&r.encode()), Some(r));
        }
        // Field 3 (varint 1) and field 4 (bytes "ab") before uid = 3.
        assert_eq!(
            Resource::decode(&[0x18, 0x01, 0x22, 0x02, b'a', b'b', 0x08, 0x03]),
            Some(Resource { uid: 3, gid: 0 })
        );
        assert_eq!(Resource::decode(&[0x08]), None);
        assert_eq!(
            Resource::decode(&[0x08, 0xff, 0xff, 0xff, 0xff, 0x1f]),
            None
        );
    }
}
