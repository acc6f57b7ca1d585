// @ts-check
// Greenroom browser SDK entry point: `import { GreenroomClient } from '/sdk/index.js'`.
export { GreenroomClient, Call, GreenroomError, decodeToken, SOURCE_CAPABILITY } from './client.js';
export {
  environmentCheck,
  browserName,
  permissionInstructions,
  queryPermission,
  watchPermission,
  classifyMediaError,
  captureTrack,
  listDevices,
  watchDevices,
  canSelectAudioOutput,
  checkMediaAccess,
  describeAccess,
} from './devices.js';
export { RingClient, randomId } from './ringing.js';
export { Emitter } from './emitter.js';
