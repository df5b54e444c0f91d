// The blog on a real LiteFS mount: nothing to prepare; the database must be on FUSE.
namespace blog {
bool prepare_litefs() { return false; }
}  // namespace blog
