// The five replicate.run calls of the Replicate guide (shared/seeds/replicate-run-sdxl-with-an-api.txt),
// verbatim except: the client's baseUrl points at the server under test, the image and mask
// are file buffers instead of replicate.delivery URLs, and sizes and steps are small so that a
// CPU runs them (width/height 1024 -> 256, num_inference_steps 50 -> 5, refine_steps '20' -> '2').
// Writes each call's output file and its prediction (from the progress callback) to argv[2].
const Replicate = require("replicate");
const fs = require("node:fs");
const path = require("node:path");

const replicate = new Replicate({
  auth: process.env.REPLICATE_API_TOKEN,
  baseUrl: process.env.REPLICATE_BASE_URL,
});
const out = process.argv[2];
const image = fs.readFileSync(path.join(out, "image.png"));
const mask = fs.readFileSync(path.join(out, "mask.png"));
const model = "stability-ai/sdxl:39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b";

const calls = {
  astronaut: {
    input: {
      prompt: "An astronaut riding a rainbow unicorn",
      width: 256, height: 256, num_inference_steps: 5,
    },
  },
  ensemble: {
    input: {
      prompt: 'A studio portrait photo of a cat',
      negative_prompt: 'ugly, soft, blurry, out of focus, low quality, garish, distorted, disfigured',
      width: 256,
      height: 256,
      num_inference_steps: 5,
      scheduler: 'DDIM',
      guidance_scale: 7.5,
      refine: 'expert_ensemble_refiner',
      high_noise_frac: '0.8'
    }
  },
  refiner: {
    input: {
      prompt: 'A studio portrait photo of a cat',
      negative_prompt: 'ugly, soft, blurry, out of focus, low quality, garish, distorted, disfigured',
      width: 256,
      height: 256,
      num_inference_steps: 5,
      scheduler: 'DDIM',
      guidance_scale: 7.5,
      refine: 'base_image_refiner',
      refine_steps: '2'
    }
  },
  img2img: {
    input: {
      prompt: 'A rainbow colored tiger',
      negative_prompt: 'ugly, soft, blurry, out of focus, low quality, garish, distorted, disfigured',
      image: image,
      prompt_strength: 0.8,
      width: 256,
      height: 256,
      num_inference_steps: 5,
      scheduler: 'DDIM',
      guidance_scale: 7.5,
      refine: 'base_image_refiner',
      refine_steps: '2'
    }
  },
  inpaint: {
    input: {
      prompt: 'A rainbow colored bear',
      negative_prompt: 'ugly, soft, blurry, out of focus, low quality, garish, distorted, disfigured',
      image: image,
      mask: mask,
      prompt_strength: 0.95,
      width: 256,
      height: 256,
      num_inference_steps: 5,
      scheduler: 'DDIM',
      guidance_scale: 7.5,
      refine: 'base_image_refiner',
      refine_steps: '2'
    }
  },
};

async function main() {
  const only = process.argv[3];
  for (const [name, options] of Object.entries(calls)) {
    if (only && name !== only) continue;
    let prediction;
    const output = await replicate.run(model, options, (p) => { prediction = p; });
    const blob = await output[0].blob();
    fs.writeFileSync(path.join(out, `${name}.out`), Buffer.from(await blob.arrayBuffer()));
    fs.writeFileSync(path.join(out, `${name}.json`), JSON.stringify(prediction));
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
