-- Argo CD health check for slm.io/v1alpha1 SLMRoute (docs/gitops.md). The gateway writes its status.
-- 1. the gateway has not observed the latest spec (status.observedGeneration or the Ready condition's
--    observedGeneration < metadata.generation, or no status yet) -> Progressing
-- 2. Accepted=False -> Degraded (a backend's SLMDeployment or Secret is missing, the task classifier's
--    ConfigMap is missing or invalid, or another route of the namespace already serves the model)
-- 3. Ready=True     -> Healthy
-- 4. otherwise      -> Progressing (e.g. a backend has no ready replica yet)
local hs = {}

local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local function observed(generation)
  if obj.status == nil then
    return false
  end
  local seen = obj.status.observedGeneration
  local ready = condition("Ready")
  if seen ~= nil and seen < generation then
    return false
  end
  if ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    return false
  end
  return seen ~= nil or (ready ~= nil and ready.observedGeneration ~= nil)
end

local generation = obj.metadata.generation or 1
if not observed(generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local accepted = condition("Accepted")
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = text(accepted, "not accepted")
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "ready")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "waiting for the gateway to find the route's backends")
return hs
