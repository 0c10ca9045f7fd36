/**
 * `portcullis schema`: the policy's JSON Schema with every finding path a rule may test (and its
 * shorthand) spelt out under `when:`, from the finding schemas of the plugins handed in, so an
 * editor completes `fcrdns.result` and offers pass | fail | none | temperror. The core's schema
 * knows no plugin; the application adds them here.
 */
import type { PluginCatalogue } from "../core/index.js";
import { policyJsonSchema } from "../core/policy/load.js";
import { shorthandOf } from "../core/policy/rules/compile.js";
import { valueJsonSchema } from "../core/policy/rules/findings.js";
import { findingsOf } from "../core/policy/static-checks.js";

type JsonSchema = Record<string, unknown>;

/** The `$defs` entry of a `when:` mapping: the one with `any`, `all` and `not` keys. */
function conditionSchema(schema: JsonSchema): JsonSchema {
  const defs = Object.values((schema.$defs ?? {}) as Record<string, JsonSchema>);
  const found = defs.find((def) => {
    const properties = def.properties as Record<string, unknown> | undefined;
    return properties !== undefined && ["any", "all", "not"].every((key) => key in properties);
  });
  if (!found) throw new Error("the policy schema has no condition definition to add findings to");
  return found;
}

export async function policyJsonSchemaWith(plugins: PluginCatalogue): Promise<JsonSchema> {
  const schema = policyJsonSchema();
  const condition = conditionSchema(schema);
  // Any test (a mapping such as { exists: true } or { network: [...] }) stays allowed at every path;
  // the forms are defined once and referred to, or the schema would repeat them at every path.
  const defs = schema.$defs as Record<string, JsonSchema>;
  const anyTest = condition.additionalProperties as { anyOf: JsonSchema[] };
  defs.findingTest = anyTest;
  const testObject = anyTest.anyOf.find((form) => form.type === "object");
  if (testObject) defs.findingTestMapping = testObject;
  const properties = condition.properties as Record<string, JsonSchema>;
  for (const info of (await findingsOf(plugins)).values()) {
    for (const leaf of info.paths ?? []) {
      const value = valueJsonSchema(leaf, info.paths ?? []);
      const described = `${leaf.type}${leaf.description ? `: ${leaf.description}` : ""} (finding of plugin ${info.plugin})`;
      const property = value
        ? {
            description: described,
            anyOf: [
              value,
              { type: "array", minItems: 1, items: value },
              ...(testObject ? [{ $ref: "#/$defs/findingTestMapping" }] : []),
            ],
          }
        : { description: described, $ref: "#/$defs/findingTest" };
      properties[leaf.path] = property;
      const shorthand = shorthandOf(leaf.path);
      if (shorthand) {
        properties[shorthand] = { ...property, description: `${leaf.path}, written short; ${described}` };
      }
    }
  }
  return schema;
}
