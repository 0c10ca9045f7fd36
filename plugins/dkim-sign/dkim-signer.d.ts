/**
 * mailauth's signer, used with a header block and body hash already computed (as mailauth's own ARC
 * sealer does), so signing does not read the message again. Only what dkim-sign uses is declared.
 */
declare module "mailauth/lib/dkim/dkim-signer.js" {
  export class DkimSigner {
    constructor(options: {
      signatureData: Array<{ signingDomain: string; selector: string; privateKey: string; canonicalization: string }>;
      headers: unknown;
      bodyHash: string;
      signTime: Date;
    });
    finalize(): Promise<void>;
    readonly signatureHeaders: string[];
    readonly errors: Array<{ signingDomain?: string; selector?: string; err: Error }>;
  }
}
