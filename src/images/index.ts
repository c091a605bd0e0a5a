/**
 * Public API of the image layer: CRIU's image files (proto/*.proto schemas, the kinds table),
 * streaming readers, atomic writers, pages files, the `parent` link, and `criu show`'s engine
 * (crit-compatible JSON both ways).
 */
export { schemaRoot, messageType, protoDir, criuOptions } from './schema.js';
export {
  decodeEntry,
  encodeEntry,
  UNKNOWN_FIELDS,
  EntryShapeError,
  WireError,
  type ImageEntry,
  type EntryValue,
} from './entry-codec.js';
export {
  IMAGE_KINDS,
  IMG_COMMON_MAGIC,
  IMG_SERVICE_MAGIC,
  IMG_VERSION,
  imageKind,
  imageFileName,
  kindOfFileName,
  kindsByMagic,
  kindsByName,
  type ImageKind,
  type ImageHeader,
} from './kinds.js';
export type { ExtraCodec, ExtraSource, EntryContext } from './extras.js';
export { decodeIpcMessages, encodeIpcMessages, type IpcMessage } from './extras.js';
export { ImageReader, openImage, readImage, readEntries, entryType, type ImageRecord } from './image-reader.js';
export { ImageWriter, writeImage, type ImageRecordInput } from './image-writer.js';
export { listImages, sniffKind, type ImageFileInfo } from './image-dir.js';
export {
  PAGE_SIZE,
  PE_PARENT,
  PE_LAZY,
  PE_PRESENT,
  PagesReader,
  readPages,
  readPagemap,
  readShmemRuns,
  shmemPagemapFileName,
  pagemapRun,
  pagemapEntry,
  type PagemapRun,
} from './pages.js';
export { PARENT_LINK, readParentLink, writeParentLink, parentDir, parentChain } from './parent.js';
export { entryToCritJson, critJsonToEntry, CritJsonError } from './crit-json.js';
export { ipBytes, ipText, ipWords } from './ip-address.js';
export { formatPyJson, parseJson, type JsonValue, type JsonObject } from './json-text.js';
export {
  showImage,
  showDir,
  formatShow,
  parseCritJson,
  critImageRecords,
  encodeJson,
  encodeJsonFile,
  hexdumpLines,
  type CritImage,
  type ShowOptions,
} from './show.js';
