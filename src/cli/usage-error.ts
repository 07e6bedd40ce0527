import { SidecarError } from '../core/errors.js';

/** Bad command-line usage (code USAGE): the CLI prints the message with the usage text and exits 2. */
export class UsageError extends SidecarError<'USAGE'> {
  constructor(message: string, options?: { cause?: unknown }) {
    super('USAGE', message, options);
    this.name = 'UsageError';
  }
}
