// Package changeset is the format of a node's snapshot in the `changes`
// mode: a tar stream that holds only what differs from the node's image,
// laid out as an image layer is.
//
//   - Paths are relative to the node's root, without a leading slash
//     ("etc/motd"), exactly as the node names them, bytes included (a name
//     need not be UTF-8, and may hold a newline).
//   - Added and modified files, directories, symlinks, hard links and
//     device nodes are ordinary tar entries with their mode, owner (numeric
//     uid and gid), times and extended attributes. A directory whose
//     entries changed appears with its own metadata; its unchanged
//     entries do not.
//   - A deleted path P is an empty regular file named WhiteoutPrefix+base(P)
//     in P's directory ("etc/.wh.issue" for a deleted etc/issue).
//   - A directory that replaced the image's directory of the same name (so
//     nothing the image had under it is kept) holds an OpaqueMarker entry.
//
// Applying a change set to a fresh container of the same image gives back
// the node's filesystem as it was captured: remove every whited-out path,
// empty every opaque directory, then extract the other entries.
package changeset

const (
	// WhiteoutPrefix prefixes the base name of a deleted path.
	WhiteoutPrefix = ".wh."
	// OpaqueMarker, inside a directory, says the image's contents of that
	// directory are gone.
	OpaqueMarker = WhiteoutPrefix + WhiteoutPrefix + ".opq"
)
