-- Argo CD health of a wattkeeper.io LLMService, from the conditions the operator writes.
-- Degraded=True (invalid spec, no feasible plan, fallback) is Degraded; a rollout is Progressing; Ready is Healthy.
local hs = { status = "Progressing", message = "Waiting for the operator to plan" }

local function condition(conditions, kind)
  for _, c in ipairs(conditions or {}) do
    if c.type == kind then return c end
  end
  return nil
end

if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.message = "Waiting for the operator to act on generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local degraded = condition(conditions, "Degraded")
local progressing = condition(conditions, "Progressing")
local ready = condition(conditions, "Ready")

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = (degraded.reason or "Degraded") .. ": " .. (degraded.message or "")
  return hs
end
if progressing ~= nil and progressing.status == "True" then
  hs.message = (progressing.reason or "Progressing") .. ": " .. (progressing.message or "")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local plan = obj.status.plan
  if plan ~= nil and plan.precision ~= nil then
    hs.message = string.format("%s, TP %s, %s replicas", tostring(plan.precision), tostring(plan.tensorParallel or "?"),
      tostring(plan.replicas or "?"))
  else
    hs.message = ready.message or "Ready"
  end
  return hs
end
if ready ~= nil then
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
end
return hs
