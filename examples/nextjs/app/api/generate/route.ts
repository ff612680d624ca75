// POST /api/generate: gates a (fake) image generation with Tollgate. Each call reserves one
// `image.render` for the user, renders, then commits; a failed render releases the hold and
// answers 502; a user over quota gets 429 with their limits, and the render never starts.
import { QuotaExceededError, Tollgate, TollgateError, TollgateNetworkError } from "@tollgate/sdk";

// The secret key is read on the server only (no NEXT_PUBLIC_ prefix): it never reaches a browser.
// Node runtime, not edge: the SDK works on both, but a long render is a Node-runtime job.
export const runtime = "nodejs";
// Every call is metered: never cache or prerender this route.
export const dynamic = "force-dynamic";

/** One client per server process, created on first use so `next build` needs no key. */
let client: Tollgate | undefined;

function tollgate(): Tollgate {
  if (client === undefined) {
    const secretKey = process.env.TOLLGATE_KEY;
    if (secretKey === undefined || secretKey === "") {
      throw new Error("set TOLLGATE_KEY (a tg_sk_test_… key from `tollgate init --json`)");
    }
    client = new Tollgate({ baseUrl: process.env.TOLLGATE_URL ?? "http://127.0.0.1:7070", secretKey });
  }
  return client;
}

interface FakeImage {
  url: string;
  prompt: string;
}

/** Stands in for a slow, failure-prone image model; a prompt containing "fail" fails. */
async function fakeRender(prompt: string): Promise<FakeImage> {
  await new Promise((resolve) => setTimeout(resolve, 200));
  if (prompt.includes("fail")) throw new Error("the image provider timed out");
  return { url: `https://images.example/${encodeURIComponent(prompt)}.png`, prompt };
}

/** Reads `{"prompt": "…"}`; an unreadable body is an empty prompt (answered 400 below). */
async function readPrompt(request: Request): Promise<string> {
  try {
    const body: unknown = await request.json();
    if (typeof body === "object" && body !== null && "prompt" in body) {
      return String((body as { prompt: unknown }).prompt ?? "");
    }
  } catch {
    // not JSON
  }
  return "";
}

export async function POST(request: Request): Promise<Response> {
  // In a real app the user comes from your session (auth cookie), never from a header.
  const userId = request.headers.get("x-user-id") ?? "";
  const prompt = await readPrompt(request);
  if (userId === "" || prompt === "") {
    return Response.json({ error: 'send an x-user-id header and a JSON body {"prompt": "…"}' }, { status: 400 });
  }
  let render: Error | undefined;
  try {
    const { value: image, commit } = await tollgate().withReservation(
      { userId, event: "image.render", metadata: { model: "fake-diffusion" }, ttlSeconds: 30 },
      async () => {
        try {
          return await fakeRender(prompt);
        } catch (error) {
          // Remember that the render (not Tollgate) failed; withReservation releases and rethrows.
          render = error instanceof Error ? error : new Error(String(error));
          throw render;
        }
      },
    );
    return Response.json({ image, limits: commit.limits });
  } catch (error) {
    if (error instanceof QuotaExceededError) {
      return Response.json(
        { error: "quota exceeded", reasons: error.answer.reasons, limits: error.answer.limits },
        { status: 429 },
      );
    }
    if (render !== undefined && error === render) {
      // The hold is already released: the user is not charged for a failed render.
      return Response.json({ error: `image generation failed: ${render.message}` }, { status: 502 });
    }
    if (error instanceof TollgateNetworkError) {
      return Response.json({ error: "metering is unreachable, try again shortly" }, { status: 503 });
    }
    if (error instanceof TollgateError) {
      return Response.json({ error: `metering refused the request: ${error.code}` }, { status: 502 });
    }
    throw error;
  }
}
