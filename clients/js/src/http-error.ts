/** `KpiHttpError`: what a failed HTTP call to the gateway throws, for the client and its drivers alike. */

/** An HTTP error of the gateway: its status and JSON body. */
export class KpiHttpError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly body: unknown,
  ) {
    super(message);
    this.name = "KpiHttpError";
  }
}
