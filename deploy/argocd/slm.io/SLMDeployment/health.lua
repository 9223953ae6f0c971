-- Argo CD health check for slm.io/v1alpha1 SLMDeployment (docs/gitops.md).
-- 1. the operator has not observed the latest spec (status.observedGeneration or the Ready condition's
--    observedGeneration < metadata.generation, or no status yet) -> Progressing
-- 2. spec.suspend is true                 -> Suspended
-- 3. Ready=True                           -> Healthy (also while an autoscaler's scale-up starts replicas
--    and minReplicas serve: reason ScalingUp, docs/autoscaling.md)
-- 4. Degraded=True                        -> Degraded (replicas without a GPU share)
-- 5. Placed=False                         -> Degraded (e.g. the GPUPool does not exist)
-- 6. otherwise                            -> Progressing (rolling out, waiting for a node's reconfiguration)
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

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: no replica runs and no GPU share is held"
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready, "ready")
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "degraded")
  return hs
end

local placed = condition("Placed")
if placed ~= nil and placed.status == "False" then
  hs.status = "Degraded"
  hs.message = text(placed, "not placed")
  return hs
end

local progressing = condition("Progressing")
hs.status = "Progressing"
if progressing ~= nil and progressing.status == "True" then
  hs.message = text(progressing, "rolling out")
else
  hs.message = text(ready, "waiting for the replicas to become ready")
end
return hs
